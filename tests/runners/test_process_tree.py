"""Cancelling a local step kills its whole tree, also processes that left its group or session.

Evidence: pids the step's processes write themselves, then /proc. The escapees
here are what real commands do: coreutils ``timeout`` makes its own process
group, ``setsid`` a new session.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from devctl_dist.runners.base import StepOutcome, StepSpec
from devctl_dist.runners.local import LocalRunner
from devctl_dist.runners.proctree import STEP_TOKEN_ENV, marked_pids
from tests.evidence import pid_alive, wait_for_pids, wait_gone

DEVCTL = str(Path(sys.executable).with_name("devctl"))


def spec(command: str, **fields: Any) -> StepSpec:
    return StepSpec(run_id="test", name="step", command=command, **fields)


def run(command: str, **fields: Any) -> StepOutcome:
    return asyncio.run(LocalRunner(kill_grace=1.0).run(spec(command, **fields)))


def own_group(pidfile: Path) -> str:
    """A command whose ``sleep`` runs under coreutils ``timeout`` (its own group); records both pids."""
    return f"cd /tmp && timeout 300 sh -c 'echo \"$$ $PPID\" > {pidfile}; exec sleep 301'"


def own_session(pidfile: Path) -> str:
    """A command that starts a ``setsid`` escapee (new session) and waits."""
    return f"setsid sh -c 'echo $$ > {pidfile}; exec sleep 300' > /dev/null 2>&1 & wait"


@pytest.fixture
def reap_strays() -> Any:
    """Kill, after the test, whatever a failing test left behind (never other tests' processes)."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def test_timeout_kills_a_child_that_made_its_own_group(tmp_path: Path, reap_strays: list[int]) -> None:
    pidfile = tmp_path / "sleep.pid"

    async def scenario() -> tuple[StepOutcome, list[int]]:
        task = asyncio.create_task(LocalRunner(kill_grace=1.0).run(spec(own_group(pidfile), timeout=2)))
        pids = await asyncio.to_thread(wait_for_pids, pidfile, 2)  # sleep and the `timeout` process
        reap_strays.extend(pids)
        assert os.getpgid(pids[1]) == pids[1], "coreutils timeout should lead its own group"
        return await task, pids

    began = time.monotonic()
    outcome, pids = asyncio.run(scenario())
    assert outcome.timed_out and time.monotonic() - began < 15
    assert wait_gone(pids, 5) == [], "the step returned but part of its tree still runs"


def test_cancellation_kills_a_setsid_escapee(tmp_path: Path, reap_strays: list[int]) -> None:
    pidfile = tmp_path / "escapee.pid"

    async def scenario() -> int:
        task = asyncio.create_task(LocalRunner(kill_grace=1.0).run(spec(own_session(pidfile))))
        escapee = (await asyncio.to_thread(wait_for_pids, pidfile))[0]
        reap_strays.append(escapee)
        assert os.getsid(escapee) == escapee
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return escapee

    escapee = asyncio.run(scenario())
    assert wait_gone([escapee], 5) == []


def test_kill_all_reaches_escapees(tmp_path: Path, reap_strays: list[int]) -> None:
    pidfile = tmp_path / "escapee.pid"

    async def scenario() -> tuple[StepOutcome, int]:
        runner = LocalRunner(kill_grace=1.0)
        task = asyncio.create_task(runner.run(spec(own_group(pidfile))))
        escapee = (await asyncio.to_thread(wait_for_pids, pidfile))[0]
        reap_strays.append(escapee)
        runner.kill_all()
        return await task, escapee

    outcome, escapee = asyncio.run(scenario())
    assert outcome.exit_code is not None and outcome.exit_code < 0
    assert wait_gone([escapee], 5) == []


def daemon_recipe(pidfile: Path) -> str:
    """The documented recipe: ``setsid -w sh -c 'daemon > log 2>&1 &'``.

    The daemon is forked inside the new session and ``-w`` waits for that to
    happen, so the step cannot end (and its group be cleaned up) before the
    daemon is out of it; ``setsid -f daemon`` races with that cleanup.
    """
    return f"setsid -w sh -c 'sh -c \"echo \\$\\$ > {pidfile}; exec sleep 300\" > /dev/null 2>&1 &'"


@pytest.mark.parametrize("then", ["", "; echo started", " && echo started"])
def test_a_successful_step_keeps_the_daemon_it_detached(
    tmp_path: Path, reap_strays: list[int], then: str
) -> None:
    pidfile = tmp_path / "daemon.pid"
    began = time.monotonic()
    outcome = run(daemon_recipe(pidfile) + then)
    daemon = wait_for_pids(pidfile)[0]
    reap_strays.append(daemon)
    assert outcome.exit_code == 0, outcome
    assert time.monotonic() - began < 5, "a detached daemon must not hold the step open"
    time.sleep(0.3)
    assert pid_alive(daemon)
    assert daemon in marked_pids(STEP_TOKEN_ENV, _token_of(daemon))


def test_nohup_in_the_background_is_not_detached(tmp_path: Path, reap_strays: list[int]) -> None:
    """``nohup cmd &`` stays in the step's group, which is cleaned up when the step ends."""
    pidfile = tmp_path / "bg.pid"
    wait = f"while [ ! -s {pidfile} ]; do sleep 0.05; done"
    outcome = run(
        f"nohup sh -c 'echo $$ > {pidfile}; exec sleep 300' > /dev/null 2>&1 & {wait}; echo started"
    )
    background = wait_for_pids(pidfile)[0]
    reap_strays.append(background)
    assert outcome.exit_code == 0
    assert wait_gone([background], 5) == []


def test_a_detached_daemon_dies_with_a_timed_out_step(tmp_path: Path, reap_strays: list[int]) -> None:
    pidfile = tmp_path / "daemon.pid"
    command = daemon_recipe(pidfile) + "; sleep 60"
    outcome = run(command, timeout=1.5)
    daemon = wait_for_pids(pidfile)[0]
    reap_strays.append(daemon)
    assert outcome.timed_out
    assert wait_gone([daemon], 5) == []


def test_an_environment_exec_cannot_carry_is_a_clear_step_failure() -> None:
    outcome = run("true", env={"A=B": "x"})
    assert outcome.exit_code is None and not outcome.succeeded
    assert outcome.error is not None and "invalid environment variable name 'A=B'" in outcome.error


def _token_of(pid: int) -> str:
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    prefix = f"{STEP_TOKEN_ENV}=".encode()
    return next(item[len(prefix) :].decode() for item in environ if item.startswith(prefix))


def _cli_workflow(tmp_path: Path, block: bool) -> Path:
    sleeper = {"name": "escapes", "command": "!" + own_group(tmp_path / "sleep.pid")}
    steps: list[dict[str, Any]] = [sleeper]
    if block:
        failing = {
            "name": "fails",
            "command": f"!while [ ! -s {tmp_path}/sleep.pid ]; do sleep 0.05; done; false",
        }
        steps = [{"parallel": {"name": "block", "on_failure": "fail_all", "steps": [sleeper, failing]}}]
    path = tmp_path / "wf.yaml"
    path.write_text(yaml.safe_dump({"steps": steps}))
    return path


@pytest.mark.parametrize("how", ["fail_all", "ctrl-c"])
def test_devctl_run_leaves_no_escapee(tmp_path: Path, reap_strays: list[int], how: str) -> None:
    """Through the real CLI: a fail_all block and Ctrl-C kill the group-leaving child too."""
    workflow = _cli_workflow(tmp_path, block=how == "fail_all")
    proc = subprocess.Popen(
        [DEVCTL, "run", str(workflow), "-o", "plain"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        pids = wait_for_pids(tmp_path / "sleep.pid", 2)
        reap_strays.extend(pids)
        if how == "ctrl-c":
            proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == (130 if how == "ctrl-c" else 1), output.decode(errors="replace")
    assert wait_gone(pids, 5) == []
