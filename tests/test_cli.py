"""The `devctl` command line: CliRunner for parsing and errors, real subprocesses for runs."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner, Result

from devctl_dist.cli import cli, parse_vars
from devctl_dist.core.exceptions import UsageError

DEVCTL = [str(Path(sys.executable).with_name("devctl"))]
STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}"


def write(tmp_path: Path, data: dict[str, Any] | str, name: str = "wf.yaml") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return path


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


def dag(tmp_path: Path) -> dict[str, Any]:
    """Five roots and a join; every step leaves a file so a test can tell whether it ran."""
    roots = [{"name": f"r{i}", "command": f"!touch {tmp_path}/ran-r{i}"} for i in range(5)]
    join = {
        "name": "join",
        "command": f"!touch {tmp_path}/ran-join",
        "depends_on": [r["name"] for r in roots],
    }
    return {"name": "fan-in", "steps": [*roots, join]}


def blocks(tmp_path: Path) -> dict[str, Any]:
    return {
        "name": "deploy",
        "steps": [
            {"name": "validate", "command": "!true"},
            {
                "parallel": {
                    "name": "Deploy all",
                    "steps": [{"name": f"svc{i}", "command": f"!touch {tmp_path}/svc{i}"} for i in range(3)],
                }
            },
            {"name": "verify", "command": "!true"},
        ],
    }


def assert_one_error_line(result: Result, code: int = 2) -> str:
    assert result.exit_code == code, (result.exit_code, result.output)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("devctl: error: ")
    assert "Traceback" not in result.output
    return lines[0]


# ---------------------------------------------------------------- validate


def test_validate_prints_ok_with_step_count_and_mode(tmp_path: Path) -> None:
    path = write(tmp_path, dag(tmp_path))
    result = invoke("validate", str(path))
    assert result.exit_code == 0, result.output
    assert result.stdout == f"OK: {path}: 6 steps (dag)\n"
    assert invoke("validate", str(write(tmp_path, blocks(tmp_path), "b.yaml"))).stdout.endswith(
        "5 steps (parallel)\n"
    )


def test_validate_warns_about_unknown_devctl_commands_but_passes(tmp_path: Path) -> None:
    path = write(tmp_path, {"steps": [{"name": "sync", "command": "argocd apps sync"}]})
    result = invoke("validate", str(path))
    assert result.exit_code == 0
    assert "1 steps (sequential)" in result.stdout
    assert re.search(
        rf"^warning: {re.escape(str(path))}: step 'sync': unknown devctl command", result.stdout, re.M
    )


CYCLE = "steps:\n" + "".join(
    f"  - name: {name}\n    command: '!true'\n    depends_on: [{dep}]\n"
    for name, dep in (("a", "c"), ("b", "a"), ("c", "b"))
)
BAD_INPUTS: dict[str, str | None] = {
    "missing file": None,
    "invalid yaml": "steps: [\n  - name: a\n",
    "not a mapping": "- a\n- b\n",
    "empty file": "",
    "unknown key": "steps:\n  - name: a\n    comand: '!true'\n",
    "bad value": "parallel:\n  max_concurrent: -1\nsteps:\n  - name: a\n    command: '!true'\n",
    "duplicate name": "steps:\n  - name: a\n    command: '!true'\n  - name: a\n    command: '!true'\n",
    "missing dependency": "steps:\n  - name: a\n    command: '!true'\n    depends_on: [ghost]\n",
    "cycle": CYCLE,
}


@pytest.mark.parametrize("command", ["validate", "run", "graph"])
@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_invalid_workflows_exit_2_with_one_line(tmp_path: Path, case: str, command: str) -> None:
    text = BAD_INPUTS[case]
    path = tmp_path / "wf.yaml" if text is None else write(tmp_path, text)
    line = assert_one_error_line(invoke(command, str(path)))
    assert str(path) in line or case in ("missing dependency", "cycle", "duplicate name")


def test_a_cycle_error_names_the_cycle(tmp_path: Path) -> None:
    path = write(tmp_path, CYCLE)
    line = assert_one_error_line(invoke("validate", str(path)))
    assert line == f"devctl: error: {path}:2: circular dependency: a -> c -> b -> a"  # line of step 'a'


def test_graph_errors_name_the_file_and_line_of_the_step(tmp_path: Path) -> None:
    missing = write(tmp_path, BAD_INPUTS["missing dependency"] or "")
    line = assert_one_error_line(invoke("validate", str(missing)))
    assert line == f"devctl: error: {missing}:2: step 'a' depends on unknown step 'ghost'"
    duplicate = write(tmp_path, BAD_INPUTS["duplicate name"] or "")
    line = assert_one_error_line(invoke("validate", str(duplicate)))
    assert line == f"devctl: error: {duplicate}:4: duplicate step name 'a'"


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    path = write(tmp_path, CYCLE)
    for args in (["--debug", "validate", str(path)], ["run", "--debug", str(path)]):
        result = invoke(*args)
        assert result.exit_code == 2
        assert "Traceback" in result.stderr
        assert result.stderr.rstrip().endswith(
            f"devctl: error: {path}:2: circular dependency: a -> c -> b -> a"
        )


# ---------------------------------------------------------------- run: options and dry-run


def test_parse_vars_splits_at_the_first_equals_and_types_values() -> None:
    assert parse_vars(["env=prod", "query=a=b", "empty=", "n=3"]) == {
        "env": "prod",
        "query": "a=b",
        "empty": "",
        "n": 3,
    }
    for bad in ("novalue", "=x", " =x"):
        with pytest.raises(UsageError, match="KEY=VALUE"):
            parse_vars([bad])


@pytest.mark.parametrize(
    "args",
    [["--var", "oops"], ["--var", "=x"], ["--broker", "redis://localhost:6379/0"]],
)
def test_bad_run_options_exit_2_with_one_line(tmp_path: Path, args: list[str]) -> None:
    path = write(tmp_path, dag(tmp_path))
    assert_one_error_line(invoke("run", str(path), *args))
    assert not list(tmp_path.glob("ran-*"))


def test_results_file_in_a_missing_directory_fails_before_running(tmp_path: Path) -> None:
    path = write(tmp_path, dag(tmp_path))
    assert_one_error_line(invoke("run", str(path), "--results-file", str(tmp_path / "no" / "r.json")))
    assert not list(tmp_path.glob("ran-*"))


def test_dry_run_prints_waves_under_the_cap_and_runs_nothing(tmp_path: Path) -> None:
    path = write(tmp_path, dag(tmp_path))
    result = invoke("run", str(path), "--dry-run", "--max-concurrent", "2")
    assert result.exit_code == 0, result.output
    assert "max_concurrent 2" in result.stdout
    waves = re.findall(r"wave \d+: (.*)", result.stdout)
    assert waves == ["r0, r1", "r2, r3", "r4", "join"]
    assert not list(tmp_path.glob("ran-*"))


def test_dry_run_shows_blocks_as_stages_and_json_parses(tmp_path: Path) -> None:
    path = write(tmp_path, blocks(tmp_path))
    text = invoke("run", str(path), "--dry-run").stdout
    assert "stage 1: step validate" in text
    assert "stage 2: parallel block 'Deploy all', 1 waves" in text
    assert "wave 1: svc0, svc1, svc2" in text
    document = json.loads(invoke("run", str(path), "--dry-run", "-o", "json").stdout)
    assert [stage["mode"] for stage in document["stages"]] == ["step", "parallel", "step"]
    assert document["stages"][1]["waves"] == [["svc0", "svc1", "svc2"]]
    assert not list(tmp_path.glob("svc*"))


def test_workflow_aliases_match_the_new_commands(tmp_path: Path) -> None:
    path = write(tmp_path, dag(tmp_path))
    assert invoke("workflow", "validate", str(path)).stdout == invoke("validate", str(path)).stdout
    alias = invoke("workflow", "dry-run", str(path), "-v", "env=prod", "--max-concurrent", "3")
    assert alias.exit_code == 0
    assert alias.stdout == invoke("run", str(path), "--dry-run", "--max-concurrent", "3").stdout
    assert invoke("workflow", "run", str(path), "--dry-run").exit_code == 0


def test_help_teaches_with_examples() -> None:
    for args in ([], ["run"], ["validate"], ["graph"], ["worker"], ["flower"], ["workflow", "dry-run"]):
        result = invoke(*args, "--help")
        assert result.exit_code == 0
        assert "Examples:" in result.stdout
    top = invoke("--help").stdout
    assert "Exit codes: 0 success, 1 a step failed, 2 invalid workflow or usage, 3 infrastructure" in top
    assert "devctl run deploy.yaml --var env=prod" in invoke("run", "--help").stdout


def test_flower_and_worker_reject_bad_options_before_starting() -> None:
    assert_one_error_line(invoke("flower", "--basic-auth", "nopassword"))
    assert_one_error_line(invoke("worker", "--queues", " , "))


# ---------------------------------------------------------------- graph


def test_graph_formats(tmp_path: Path) -> None:
    path = write(tmp_path, dag(tmp_path))
    text = invoke("graph", str(path)).stdout
    assert "layer 2:" in text
    assert re.search(r"join\s+<- r0, r1, r2, r3, r4", text)
    mermaid = invoke("graph", str(path), "--format", "mermaid").stdout
    assert mermaid.startswith("graph TD\n")
    assert mermaid.count("-->") == 5
    dot = invoke("graph", str(path), "-f", "dot").stdout
    assert dot.startswith('digraph "fan-in" {')
    assert dot.count("->") == 5


# ---------------------------------------------------------------- real `devctl run` processes


def devctl(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*DEVCTL, *args], capture_output=True, text=True, timeout=timeout)


def test_run_succeeds_with_plain_lines_when_stdout_is_a_pipe(tmp_path: Path) -> None:
    path = write(tmp_path, dag(tmp_path))
    results = tmp_path / "results.json"
    proc = devctl("run", str(path), "--results-file", str(results))
    assert proc.returncode == 0, proc.stderr
    assert {p.name for p in tmp_path.glob("ran-*")} == {*(f"ran-r{i}" for i in range(5)), "ran-join"}
    lines = proc.stdout.splitlines()
    assert all(re.match(STAMP + " ", line) for line in lines), proc.stdout
    assert any(re.search(r" START r0 \(attempt 1\)$", line) for line in lines)
    assert any(re.search(r" OK join \d+\.\d\ds$", line) for line in lines)
    assert "\x1b[" not in proc.stdout  # no terminal escapes in a pipe
    document = json.loads(results.read_text())
    assert document["success"] is True
    assert document["counts"] == {"succeeded": 6}


def test_failed_run_exits_1_and_json_output_is_the_only_stdout(tmp_path: Path) -> None:
    data = {
        "name": "failing",
        "vars": {"who": "nobody"},
        "steps": [
            {"name": "greet", "command": f"!echo '{{{{ who }}}}' > {tmp_path}/greeting"},
            {"name": "deploy", "command": "!echo 'error: cluster unreachable' >&2; exit 3"},
            {"name": "after", "command": f"!touch {tmp_path}/after"},
        ],
    }
    path = write(tmp_path, data)
    results = tmp_path / "results.json"
    args = ("run", str(path), "-o", "json", "--var", "who=a=b", "--results-file", str(results))
    proc = devctl(*args)
    assert proc.returncode == 1, proc.stderr
    document = json.loads(proc.stdout)  # the whole of stdout is one JSON document
    steps = {step["name"]: step for step in document["steps"]}
    assert steps["deploy"]["status"] == "failed"
    assert steps["deploy"]["exit_code"] == 3
    assert "cluster unreachable" in steps["deploy"]["stderr"]
    assert steps["after"]["status"] == "skipped"
    assert (tmp_path / "greeting").read_text() == "a=b\n"
    assert not (tmp_path / "after").exists()
    assert json.loads(results.read_text())["run_id"] == document["run_id"]


def test_plain_output_shows_why_a_step_failed(tmp_path: Path) -> None:
    data = {"steps": [{"name": "deploy", "command": "!echo 'error: cluster unreachable' >&2; exit 3"}]}
    proc = devctl("run", str(write(tmp_path, data)), "-o", "plain")
    assert proc.returncode == 1
    assert re.search(r" FAIL deploy exit 3 \d+\.\d\ds: error: cluster unreachable$", proc.stdout, re.M)


def test_a_local_run_never_imports_celery(tmp_path: Path) -> None:
    path = write(tmp_path, dag(tmp_path))
    code = (
        "import sys\n"
        "from devctl_dist.cli import cli\n"
        f"code = cli.main(['run', {str(path)!r}, '-o', 'json'], standalone_mode=False)\n"
        "assert code == 0, code\n"
        "assert not [m for m in sys.modules if m.split('.')[0] in ('celery', 'kombu')], 'celery imported'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_distributed_run_with_an_unreachable_broker_exits_3_fast(tmp_path: Path) -> None:
    path = write(tmp_path, dag(tmp_path))
    broker = f"redis://127.0.0.1:{_closed_port()}/0"
    started = time.monotonic()
    proc = devctl("run", str(path), "--distributed", "--broker", broker, "-o", "plain", timeout=90)
    elapsed = time.monotonic() - started
    assert proc.returncode == 3, (proc.stdout, proc.stderr)  # infrastructure: CI may retry
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("devctl: error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    assert elapsed < 60
    assert not list(tmp_path.glob("ran-*"))


# ---------------------------------------------------------------- distributed, end to end


@pytest.mark.distributed
def test_distributed_run_through_the_cli(
    tmp_path: Path, distributed_env: dict[str, str], two_workers: list[Any]
) -> None:
    path = write(tmp_path, dag(tmp_path))
    proc = subprocess.run(
        [*DEVCTL, "run", str(path), "--distributed", "-o", "json"],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, **distributed_env},
    )
    assert proc.returncode == 0, proc.stderr
    document = json.loads(proc.stdout)
    assert document["success"] is True and document["counts"] == {"succeeded": 6}
    assert {p.name for p in tmp_path.glob("ran-*")} == {*(f"ran-r{i}" for i in range(5)), "ran-join"}


def _ancestors(pid: int) -> list[int]:
    chain = [pid]
    while chain[-1] > 1:
        stat = Path(f"/proc/{chain[-1]}/stat").read_text()
        chain.append(int(stat.rsplit(")", 1)[1].split()[1]))
    return chain


def _wait_ready(log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while " ready." not in log.read_text(errors="replace"):
        assert time.monotonic() < deadline, log.read_text(errors="replace")
        time.sleep(0.1)


@pytest.mark.distributed
def test_devctl_worker_serves_its_queue(tmp_path: Path, distributed_env: dict[str, str]) -> None:
    queue = f"cli-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, **distributed_env}
    log = (tmp_path / "worker.log").open("wb")
    worker = subprocess.Popen(
        [*DEVCTL, "worker", "--queues", queue, "--concurrency", "1", "--loglevel", "info"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        _wait_ready(tmp_path / "worker.log")  # `run` checks that a live worker consumes the queue
        data = {
            "steps": [{"name": "where", "command": f"!echo $PPID > {tmp_path}/ran-where", "queue": queue}]
        }
        proc = subprocess.run(
            [*DEVCTL, "run", str(write(tmp_path, data)), "--distributed", "-o", "plain"],
            capture_output=True,
            text=True,
            timeout=180,
            env=env,
        )
        assert proc.returncode == 0, (proc.stdout, proc.stderr, (tmp_path / "worker.log").read_text())
        step_parent = int((tmp_path / "ran-where").read_text())
        assert worker.pid in _ancestors(step_parent)  # the step ran under the worker we started
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            assert worker.wait(timeout=60) == 0
        finally:
            if worker.poll() is None:
                worker.kill()
            log.close()
