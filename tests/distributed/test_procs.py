"""Finding and killing a step's processes by the task id in their environment (/proc)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

from devctl_dist.distributed import procs
from tests.evidence import pid_alive, sleeper, wait_for_pids


def _spawn(task_id: str, command: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, procs.TASK_ID_ENV: task_id}
    return subprocess.Popen(["/bin/sh", "-c", command], env=env, start_new_session=True)


def test_finds_the_whole_tree_including_setsid_escapees(tmp_path: Path) -> None:
    task_id = f"r{uuid.uuid4().hex[:6]}:step:1"
    pidfile = tmp_path / "pids"
    proc = _spawn(task_id, sleeper(pidfile, 30))
    try:
        pids = wait_for_pids(pidfile, 3)
        assert set(pids) <= set(procs.marked_pids(task_id))
        assert procs.marked_pids(task_id + "0") == []  # a prefix of another id does not match
        assert procs.kill_marked(task_id, grace=2.0)
        assert not any(pid_alive(p) for p in pids)
    finally:
        proc.kill()
        proc.wait()


def test_sigkill_after_grace_for_a_step_ignoring_sigterm(tmp_path: Path) -> None:
    task_id = f"r{uuid.uuid4().hex[:6]}:stubborn:1"
    pidfile = tmp_path / "pids"
    proc = _spawn(task_id, f"trap '' TERM; echo $$ > {pidfile}; while :; do sleep 0.1; done")
    try:
        [pid] = wait_for_pids(pidfile, 1)
        began = time.monotonic()
        assert procs.kill_marked(task_id, grace=0.5)
        assert 0.4 < time.monotonic() - began < 5
        assert not pid_alive(pid)
    finally:
        proc.kill()
        proc.wait()


def test_never_signals_its_own_process() -> None:
    task_id = f"r{uuid.uuid4().hex[:6]}:self:1"
    code = (
        "import os, sys; from devctl_dist.distributed import procs; "
        f"os.environ[procs.TASK_ID_ENV] = '{task_id}'; "
        f"print(procs.kill_marked('{task_id}', 0.1))"
    )
    env = {**os.environ, procs.TASK_ID_ENV: task_id}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True"
