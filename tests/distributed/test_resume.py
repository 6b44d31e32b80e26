"""`devctl run --resume RUN_ID` after the coordinator was killed: nothing runs twice, nothing is lost."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.evidence import wait_for_pids

DEVCTL = str(Path(sys.executable).with_name("devctl"))


def _workflow(tmp_path: Path) -> Path:
    steps = [
        {"name": "a", "command": f"!echo a >> {tmp_path}/a.count"},
        {
            "name": "b",
            "command": f"!echo $$ > {tmp_path}/b.pid; echo b >> {tmp_path}/b.count; sleep 3",
            "depends_on": ["a"],
        },
        {"name": "c", "command": f"!echo c >> {tmp_path}/c.count", "depends_on": ["b"]},
    ]
    path = tmp_path / "wf.yaml"
    path.write_text(yaml.safe_dump({"name": "resumable", "steps": steps}, sort_keys=False))
    return path


@pytest.mark.distributed
def test_resume_after_the_coordinator_was_killed(
    tmp_path: Path, distributed_env: dict[str, str], two_workers: list[Any]
) -> None:
    env = {**os.environ, **distributed_env}
    path = _workflow(tmp_path)
    first = subprocess.Popen(
        [DEVCTL, "run", str(path), "--distributed", "--output", "plain"],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert first.stdout is not None
    header = first.stdout.readline()
    match = re.search(r"run_id=(\S+)", header)
    assert match, header
    wait_for_pids(tmp_path / "b.pid")  # b runs on a worker now
    first.send_signal(signal.SIGKILL)  # the coordinator dies without revoking anything
    first.wait(10)

    second = subprocess.run(
        [DEVCTL, "run", str(path), "--distributed", "--resume", match.group(1), "--output", "json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert second.returncode == 0, second.stderr
    result = json.loads(second.stdout)
    assert result["run_id"] == match.group(1)
    assert {s["name"]: s["status"] for s in result["steps"]} == {
        "a": "succeeded",
        "b": "succeeded",
        "c": "succeeded",
    }
    for name in "abc":  # each ran exactly once, across both coordinators
        assert (tmp_path / f"{name}.count").read_text().splitlines() == [name]


def test_local_resume_of_an_unknown_run_is_one_line(tmp_path: Path) -> None:
    """Local --resume reads the run store (tests/test_cli_history.py); an unknown id is exit 2, one line."""
    proc = subprocess.run(
        [DEVCTL, "run", str(_workflow(tmp_path)), "--resume", "x"], capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("devctl: error: --resume x: no run 'x' in the run store ")
    assert len(proc.stderr.strip().splitlines()) == 1
