"""The run history through the real ``devctl``: output lines, runs list/show, logs, local resume, masking.

Each test gets its own run store (``DEVCTL_HOME``); steps count their own executions
in files, so "reused, not run again" is what the steps themselves say.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

DEVCTL = str(Path(sys.executable).with_name("devctl"))
SECRET = "hunter2-s3cr3t"

WORKFLOW = """
name: hist
vars: {{DEPLOY_TOKEN: {secret}}}
steps:
  - name: build
    command: "!echo build >> {d}/build.count; echo built with {{{{ DEPLOY_TOKEN }}}}"
  - name: test
    depends_on: [build]
    command: >-
      !echo test >> {d}/test.count; echo sees {{{{ results['build'].stdout | quote }}}}; test -f {d}/fixed
  - name: deploy
    depends_on: [test]
    command: "!echo deploy >> {d}/deploy.count; echo deployed"
"""


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "home"
    monkeypatch.setenv("DEVCTL_HOME", str(path))
    return path


def devctl(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([DEVCTL, *args], capture_output=True, text=True, timeout=timeout)


def write(tmp_path: Path, text: str = WORKFLOW) -> Path:
    path = tmp_path / "hist.yaml"
    path.write_text(text.format(d=tmp_path, secret=SECRET))
    return path


def counts(tmp_path: Path, name: str) -> int:
    path = tmp_path / f"{name}.count"
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_plain_output_lines_are_prefixed_and_secrets_masked_everywhere(tmp_path: Path, home: Path) -> None:
    (tmp_path / "fixed").touch()
    results = tmp_path / "result.json"
    proc = devctl("run", str(write(tmp_path)), "-o", "plain", "--results-file", str(results))
    assert proc.returncode == 0, proc.stderr
    assert " build | built with ***" in proc.stdout
    assert " test | sees built with ***" in proc.stdout
    run_id = json.loads(results.read_text())["run_id"]
    logs = devctl("logs", run_id)
    show = devctl("runs", "show", run_id, "-o", "json")
    listed = devctl("runs", "list", "--output", "json")
    for text in (proc.stdout, results.read_text(), logs.stdout, show.stdout, listed.stdout):
        assert SECRET not in text
    stored = b"".join(p.read_bytes() for p in home.rglob("*") if p.is_file())
    assert SECRET.encode() not in stored  # neither in the SQLite database nor in any log file
    assert logs.stdout.splitlines() == [
        "build | built with ***",
        "test | sees built with ***",
        "deploy | deployed",
    ]
    quiet = devctl("run", str(write(tmp_path)), "-o", "plain", "--quiet")
    assert quiet.returncode == 0 and " | " not in quiet.stdout and "OK deploy" in quiet.stdout


def test_stderr_lines_are_told_apart(tmp_path: Path, home: Path) -> None:
    path = tmp_path / "err.yaml"
    path.write_text('steps:\n  - {name: s, command: "!echo out; echo err >&2"}\n')
    proc = devctl("run", str(path), "-o", "plain")
    assert " s | out" in proc.stdout and " s ! err" in proc.stdout


def test_runs_list_and_show_record_states_exit_codes_and_hashes(tmp_path: Path, home: Path) -> None:
    proc = devctl("run", str(write(tmp_path)), "-o", "plain")
    assert proc.returncode == 1
    runs = json.loads(devctl("runs", "list", "-o", "json", "--limit", "5").stdout)
    assert len(runs) == 1
    run = runs[0]
    assert run["state"] == "failed" and run["exit_code"] == 1 and run["file"] == str(tmp_path / "hist.yaml")
    assert run["counts"] == {"succeeded": 1, "failed": 1, "skipped": 1} and run["steps_hash"]
    show = devctl("runs", "show", run["run_id"])
    assert show.returncode == 0
    lines = {line.split()[0]: line.split()[1:3] for line in show.stdout.splitlines()[4:-1]}
    assert lines["build"] == ["succeeded", "0"] and lines["test"] == ["failed", "1"]
    assert lines["deploy"][0] == "skipped"
    table = devctl("runs", "list").stdout
    assert run["run_id"] in table and "1 succeeded, 1 failed, 1 skipped" in table
    missing = devctl("runs", "show", "nope")
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1 and "no run 'nope'" in missing.stderr
    assert devctl("logs", run["run_id"], "nope").returncode == 2


def test_resume_after_a_failure_reuses_succeeded_steps_with_their_outputs(tmp_path: Path, home: Path) -> None:
    path = write(tmp_path)
    assert devctl("run", str(path), "-o", "plain").returncode == 1
    (tmp_path / "fixed").touch()
    resumed = devctl("run", str(path), "-o", "plain", "--resume", "last")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert (counts(tmp_path, "build"), counts(tmp_path, "test"), counts(tmp_path, "deploy")) == (1, 2, 1)
    assert " test | sees built with ***" in resumed.stdout  # results['build'] came from the store
    runs = json.loads(devctl("runs", "list", "-o", "json").stdout)
    assert len(runs) == 1 and runs[0]["state"] == "succeeded" and runs[0]["resumes"] == 1
    again = devctl("run", str(path), "-o", "plain", "--resume", runs[0]["run_id"])
    assert again.returncode == 0 and counts(tmp_path, "deploy") == 1  # everything succeeded: nothing runs
    assert devctl("logs", runs[0]["run_id"], "test").stdout.count("sees built") == 2  # both runs' lines


def test_resume_refuses_changed_steps_unless_forced(tmp_path: Path, home: Path) -> None:
    path = write(tmp_path)
    assert devctl("run", str(path), "-o", "plain").returncode == 1
    path.write_text(path.read_text().replace("echo deployed", "echo shipped"))
    refused = devctl("run", str(path), "--resume", "last")
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1
    assert "steps changed since that run ('deploy')" in refused.stderr and "--force" in refused.stderr
    (tmp_path / "fixed").touch()
    forced = devctl("run", str(path), "-o", "plain", "--resume", "last", "--force")
    assert forced.returncode == 0 and " deploy | shipped" in forced.stdout
    assert counts(tmp_path, "build") == 1


def test_resume_after_ctrl_c_and_follow_a_running_run(tmp_path: Path, home: Path) -> None:
    path = tmp_path / "slow.yaml"
    path.write_text(
        f"""
steps:
  - {{name: first, command: "!echo first >> {tmp_path}/first.count; echo one"}}
  - name: slow
    command: "!echo slow >> {tmp_path}/slow.count; echo tick; test -f {tmp_path}/quick || sleep 30"
"""
    )
    proc = subprocess.Popen([DEVCTL, "run", str(path), "-o", "plain"], stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while counts(tmp_path, "slow") == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        follow = subprocess.Popen([DEVCTL, "logs", "last", "--follow"], stdout=subprocess.PIPE, text=True)
        time.sleep(1.0)
        assert follow.poll() is None  # the run is still going: follow keeps waiting
        proc.send_signal(signal.SIGINT)
        assert proc.wait(20) == 130
        out, _ = follow.communicate(timeout=10)  # ends by itself once the run is over
    finally:
        proc.kill()
    assert out.splitlines() == ["first | one", "slow | tick"]
    run = json.loads(devctl("runs", "list", "-o", "json").stdout)[0]
    assert run["state"] == "interrupted" and run["exit_code"] == 130
    (tmp_path / "quick").touch()
    done = devctl("run", str(path), "-o", "plain", "--resume", run["run_id"])
    assert done.returncode == 0, done.stdout
    assert counts(tmp_path, "first") == 1 and counts(tmp_path, "slow") == 2  # the cancelled step ran again


def test_resume_of_a_running_or_unknown_run_is_refused(tmp_path: Path, home: Path) -> None:
    missing = devctl("run", str(write(tmp_path)), "--resume", "last")
    assert missing.returncode == 2 and "no earlier run of" in missing.stderr


def test_resume_after_a_killed_devctl_waits_for_its_leftover_steps(tmp_path: Path, home: Path) -> None:
    """SIGKILL leaves the step running; resuming then would run it twice at once: refused until it ends."""
    path = tmp_path / "orphan.yaml"
    path.write_text(
        f"""
steps:
  - name: slow
    command: "!echo slow >> {tmp_path}/slow.count; while [ ! -e {tmp_path}/go ]; do sleep 0.1; done"
"""
    )
    proc = subprocess.Popen([DEVCTL, "run", str(path), "-o", "plain"], stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while counts(tmp_path, "slow") == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.kill()  # the coordinator dies; its step (its own session) keeps running
        proc.wait(10)
        refused = devctl("run", str(path), "--resume", "last")
        assert refused.returncode == 2, refused.stderr
        assert "process(es) of that run still run" in refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1
        assert counts(tmp_path, "slow") == 1  # nothing started a second copy
    finally:
        (tmp_path / "go").touch()  # the leftover step ends by itself
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        done = devctl("run", str(path), "-o", "plain", "--resume", "last")
        if done.returncode != 2:
            break
        time.sleep(0.2)
    assert done.returncode == 0, done.stderr
    assert counts(tmp_path, "slow") == 2  # it ran again only after the first copy was gone
