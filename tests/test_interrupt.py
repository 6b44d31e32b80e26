"""Ctrl-C on a real `devctl run`: children gone, partial results written, exit 130."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.evidence import pid_alive, wait_gone
from tests.workflows.semantics import read_pid

DEVCTL = [str(Path(sys.executable).with_name("devctl"))]


def _workflow(tmp_path: Path) -> Path:
    steps = [
        {
            "name": f"sleeper{i}",
            "command": f"!sleep 60 & echo $! > {tmp_path}/child{i}.pid; "
            f"echo $$ > {tmp_path}/main{i}.pid; wait",
        }
        for i in range(3)
    ]
    data = {
        "name": "interrupt-me",
        "steps": [
            {"name": "first", "command": "!true"},
            {"parallel": {"name": "sleepers", "steps": steps, "max_concurrent": 2}},
            {"name": "never", "command": f"!touch {tmp_path}/never"},
        ],
    }
    path = tmp_path / "wf.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _wait_for(paths: list[Path], within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if all(p.exists() and p.read_text().strip() for p in paths):
            return
        time.sleep(0.05)
    raise AssertionError(f"steps did not start: {paths}")


@pytest.fixture(params=["local", "distributed"])
def mode(request: pytest.FixtureRequest) -> tuple[list[str], dict[str, str]]:
    """Extra `devctl run` arguments and environment for each runner."""
    if request.param == "local":
        return [], {}
    request.getfixturevalue("two_workers")
    env: dict[str, str] = request.getfixturevalue("distributed_env")
    return ["--distributed"], env


def test_sigint_kills_steps_writes_partial_results_and_exits_130(
    tmp_path: Path, mode: tuple[list[str], dict[str, str]]
) -> None:
    results = tmp_path / "results.json"
    extra, env = mode
    proc = subprocess.Popen(
        [
            *DEVCTL,
            "run",
            str(_workflow(tmp_path)),
            "--output",
            "plain",
            "--results-file",
            str(results),
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **env},
    )
    pidfiles = [tmp_path / f"{kind}{i}.pid" for kind in ("child", "main") for i in (0, 1)]
    _wait_for(pidfiles)
    pids = [read_pid(p) for p in pidfiles]
    assert all(pid_alive(p) for p in pids)
    proc.send_signal(signal.SIGINT)
    try:
        out, err = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    assert proc.returncode == 130, (out, err)
    assert wait_gone(pids, timeout=2.0) == []
    assert "Traceback" not in err
    data = json.loads(results.read_text())
    assert data["interrupted"] is True
    status = {s["name"]: s["status"] for s in data["steps"]}
    assert status["first"] == "succeeded"
    assert status["sleeper0"] == status["sleeper1"] == "cancelled"
    assert status["sleeper2"] == "skipped"
    assert status["never"] == "skipped"
    assert not (tmp_path / "never").exists()


def test_sigterm_is_treated_like_ctrl_c(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [*DEVCTL, "run", str(_workflow(tmp_path)), "--output", "json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    pidfiles = [tmp_path / f"child{i}.pid" for i in (0, 1)]
    _wait_for(pidfiles)
    pids = [read_pid(p) for p in pidfiles]
    os.kill(proc.pid, signal.SIGTERM)
    out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 143  # 128 + SIGTERM (issue 10)
    assert wait_gone(pids, timeout=2.0) == []
    assert json.loads(out)["interrupted"] is True
