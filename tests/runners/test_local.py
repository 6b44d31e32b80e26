"""LocalRunner against real processes; evidence comes from /proc and files the steps write."""

from __future__ import annotations

import asyncio
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from devctl_dist.runners.base import StepOutcome, StepRunner, StepSpec
from devctl_dist.runners.local import LocalRunner, direct_words, plan_launch


def spec(command: str, **fields: Any) -> StepSpec:
    return StepSpec(run_id="test", name="step", command=command, **fields)


def run(command: str, runner: LocalRunner | None = None, **fields: Any) -> StepOutcome:
    return asyncio.run((runner or LocalRunner()).run(spec(command, **fields)))


def alive(pid: int) -> bool:
    """Running (not merely a zombie left to a non-reaping init)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except FileNotFoundError:
        return False
    return stat.rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X")


def read_pids(*files: Path) -> list[int]:
    return [int(path.read_text()) for path in files]


async def wait_for_files(*files: Path, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not all(path.exists() and path.read_text().strip() for path in files):
        assert time.monotonic() < deadline, f"step never wrote {files}"
        await asyncio.sleep(0.01)


def test_implements_the_step_runner_protocol() -> None:
    runner: StepRunner = LocalRunner()
    assert runner.name == "local"


@pytest.mark.parametrize(
    ("command", "code"), [("true", 0), ("false", 1), ("exit 3", 3), ("sh -c 'exit 4'", 4), ("kill -9 $$", -9)]
)
def test_exit_codes(command: str, code: int) -> None:
    outcome = run(command)
    assert outcome.exit_code == code
    assert outcome.succeeded is (code == 0)
    assert not outcome.timed_out


def test_pipes_and_redirects_go_through_sh(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    outcome = run(f"echo abc | tr a-z A-Z > {target} && cat {target} && echo err >&2 || echo never")
    assert (outcome.exit_code, outcome.stdout, outcome.stderr) == (0, "ABC\n", "err\n")
    assert target.read_text() == "ABC\n"


def test_plain_commands_are_executed_without_a_shell() -> None:
    assert direct_words("sleep  5") == ["sleep", "5"]
    assert plan_launch(spec("true")).argv == ["true"]
    for shell_only in (
        "echo $HOME",
        "a=b true",
        "cd /tmp",
        "exit 1",
        "ls *.py",
        "true # c",
        "echo hi",
        "x\ny",
    ):
        assert direct_words(shell_only) is None, shell_only

    async def scenario() -> str:
        runner = LocalRunner()
        task = asyncio.create_task(runner.run(spec("sleep 2")))
        while not runner.running_pgids():
            await asyncio.sleep(0.01)
        comm = Path(f"/proc/{runner.running_pgids()[0]}/comm").read_text().strip()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return comm

    assert asyncio.run(scenario()) == "sleep"


def test_missing_program_reports_127_like_sh() -> None:
    direct = run("no-such-program --flag")
    assert (direct.exit_code, direct.stderr) == (127, "sh: 1: no-such-program: not found\n")
    through_sh = run("no-such-program $HOME")
    assert through_sh.exit_code == 127
    assert "no-such-program: not found" in through_sh.stderr


def test_not_executable_is_126_and_script_without_shebang_runs(tmp_path: Path) -> None:
    data = tmp_path / "data.txt"
    data.write_text("x")
    assert run(str(data)).exit_code == 126
    script = tmp_path / "plain-script"
    script.write_text("echo from script\n")
    script.chmod(0o755)
    assert run(str(script)).stdout == "from script\n"


def test_env_is_merged_and_cwd_is_used(tmp_path: Path) -> None:
    outcome = run("printenv DEVCTL_TEST_VAR", env={"DEVCTL_TEST_VAR": "a value"})
    assert outcome.stdout == "a value\n"
    assert "PATH=" in run("env", env={"X": "1"}).stdout
    (tmp_path / "marker").write_text("")
    assert run("ls", cwd=str(tmp_path)).stdout == "marker\n"
    assert run("pwd", cwd=str(tmp_path)).stdout == f"{tmp_path}\n"


@pytest.mark.parametrize("in_tmp_dir", [False, True])
def test_steps_start_with_default_signals_even_if_we_ignore_them(tmp_path: Path, in_tmp_dir: bool) -> None:
    """A Celery pool child ignores SIGINT (and may ignore SIGTERM): its steps must not inherit that."""
    cwd = str(tmp_path) if in_tmp_dir else None
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        began = time.monotonic()
        outcome = run("sleep 30", LocalRunner(kill_grace=20), timeout=0.3, cwd=cwd)
        interrupted = run("kill -INT $$; sleep 5", cwd=cwd)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    assert outcome.timed_out and outcome.exit_code == -signal.SIGTERM
    assert time.monotonic() - began < 10
    assert interrupted.exit_code == -signal.SIGINT


def test_cwd_steps_report_failures_like_sh(tmp_path: Path) -> None:
    missing = run("no-such-program x", cwd=str(tmp_path))
    assert missing.exit_code == 127
    assert "no-such-program: not found" in missing.stderr
    assert run("exit 9", cwd=str(tmp_path)).exit_code == 9
    plugin = run("echo", kind="plugin", params={"message": "in dir"}, cwd=str(tmp_path))
    assert plugin.stdout == "in dir\n"


def test_path_override_resolves_direct_commands(tmp_path: Path) -> None:
    tool = tmp_path / "devctl-test-tool"
    tool.write_text("#!/bin/sh\necho tool ran\n")
    tool.chmod(0o755)
    path = f"{tmp_path}:{os.environ['PATH']}"
    assert run("devctl-test-tool", env={"PATH": path}).stdout == "tool ran\n"
    assert run("devctl-test-tool").exit_code == 127


def test_missing_cwd_is_a_clear_error(tmp_path: Path) -> None:
    outcome = run("true", cwd=str(tmp_path / "absent"))
    assert not outcome.succeeded
    assert outcome.error is not None and "absent" in outcome.error


def test_sigpipe_is_default_in_steps() -> None:
    outcome = run("yes | head -n 1")
    assert (outcome.exit_code, outcome.stdout, outcome.stderr) == (0, "y\n", "")


def test_timestamps_bracket_the_step(tmp_path: Path) -> None:
    stamp = tmp_path / "stamp"
    outcome = run(f"sleep 0.1; date +%s.%N > {stamp}")
    written = float(stamp.read_text())
    assert outcome.started_at - 0.01 <= written <= outcome.ended_at + 0.01
    assert outcome.ended_at - outcome.started_at >= 0.1


def test_output_is_truncated_with_bounded_memory() -> None:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    size = 50 * 1024 * 1024
    outcome = run(f"head -c {size} /dev/zero | tr '\\0' x; echo tail >&2", output_limit=1000)
    grown_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert outcome.exit_code == 0
    tail = 64 * 1024  # the end is kept too: it usually says why a step failed
    assert outcome.stdout == "x" * 1000 + f"\n[... {size - 1000 - tail} bytes truncated]\n" + "x" * tail
    assert outcome.stderr == "tail\n"
    assert grown_kb < 20 * 1024


def test_invalid_utf8_is_replaced() -> None:
    assert run("printf 'a\\377b'").stdout == "a\ufffdb"


def test_timeout_kills_the_whole_tree(tmp_path: Path) -> None:
    first, second = tmp_path / "first.pid", tmp_path / "second.pid"
    command = f"sleep 60 & echo $! > {first}; sleep 60 & echo $! > {second}; wait"
    began = time.monotonic()
    outcome = run(command, timeout=1.0)
    assert time.monotonic() - began < 10
    assert outcome.timed_out and not outcome.succeeded
    assert outcome.exit_code == -signal.SIGTERM
    pids = read_pids(first, second)
    assert not any(alive(pid) for pid in pids), pids


def test_timeout_escalates_to_sigkill_after_grace(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    began = time.monotonic()
    outcome = run(
        f"trap '' TERM; sleep 60 & echo $! > {pid_file}; wait", LocalRunner(kill_grace=0.5), timeout=0.5
    )
    assert 0.9 <= time.monotonic() - began < 10
    assert outcome.timed_out
    assert outcome.exit_code == -signal.SIGKILL
    assert not alive(read_pids(pid_file)[0])


def test_cancellation_kills_the_tree_before_raising(tmp_path: Path) -> None:
    first, second, shell = tmp_path / "first.pid", tmp_path / "second.pid", tmp_path / "sh.pid"
    command = f"sleep 60 & echo $! > {first}; sleep 60 & echo $! > {second}; echo $$ > {shell}; wait"

    async def scenario() -> list[int]:
        runner = LocalRunner()
        task = asyncio.create_task(runner.run(spec(command)))
        await wait_for_files(first, second, shell)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert runner.running_pgids() == []
        return read_pids(first, second, shell)

    pids = asyncio.run(scenario())
    assert not any(alive(pid) for pid in pids), pids


def test_second_cancellation_skips_the_grace(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"

    async def scenario() -> float:
        runner = LocalRunner(kill_grace=30)
        task = asyncio.create_task(runner.run(spec(f"trap '' TERM; echo $$ > {pid_file}; sleep 60; :")))
        await wait_for_files(pid_file)
        task.cancel()
        await asyncio.sleep(0.2)
        began = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return time.monotonic() - began

    assert asyncio.run(scenario()) < 5
    assert not alive(read_pids(pid_file)[0])


@pytest.mark.parametrize("redirect", ["", " > /dev/null 2>&1"])
def test_background_grandchild_is_killed_and_does_not_hang(tmp_path: Path, redirect: str) -> None:
    pid_file = tmp_path / "bg.pid"
    began = time.monotonic()
    outcome = run(f"sleep 60{redirect} & echo $! > {pid_file}; echo done")
    assert time.monotonic() - began < 5
    assert (outcome.exit_code, outcome.stdout) == (0, "done\n")
    assert not alive(read_pids(pid_file)[0])


def test_kill_all_signals_running_groups() -> None:
    async def scenario() -> StepOutcome:
        runner = LocalRunner()
        task = asyncio.create_task(runner.run(spec("sleep 60")))
        while not runner.running_pgids():
            await asyncio.sleep(0.01)
        runner.kill_all()
        return await task

    outcome = asyncio.run(scenario())
    assert outcome.exit_code == -signal.SIGKILL


def test_one_runner_serves_successive_event_loops() -> None:
    runner = LocalRunner()
    assert run("true", runner).exit_code == 0
    assert run("echo again", runner).stdout == "again\n"


_FD_LEAK_SCENARIO = """
import asyncio, os
from devctl_dist.runners.base import StepSpec
from devctl_dist.runners.local import LocalRunner

def fds():
    found = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            found[fd] = os.readlink(f"/proc/self/fd/{fd}")
        except FileNotFoundError:  # the descriptor listdir itself used
            pass
    return found

async def scenario():
    runner, gate = LocalRunner(), asyncio.Semaphore(8)
    async def one(index):
        async with gate:
            command = f"echo {index}" if index % 2 else "true"
            return await runner.run(StepSpec(run_id="t", name="s", command=command, timeout=30))
    return await asyncio.gather(*(one(index) for index in range(60)))

asyncio.run(asyncio.sleep(0))  # the loop's own lazily created descriptors are not a leak
before = fds()
outcomes = asyncio.run(scenario())
after = fds()
assert all(outcome.exit_code == 0 for outcome in outcomes), outcomes
assert outcomes[7].stdout == "7\\n", outcomes[7]
leaked = {fd: target for fd, target in after.items() if before.get(fd) != target}
print("leaked", sorted(leaked.items()))
"""


def test_concurrent_steps_leak_no_descriptors() -> None:
    """Measured in a fresh interpreter: other tests' cleanup cannot close or open descriptors meanwhile."""
    done = subprocess.run(
        [sys.executable, "-c", _FD_LEAK_SCENARIO], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "leaked []"


def test_plugin_echo_runs_in_its_own_process() -> None:
    outcome = run("echo", kind="plugin", params={"message": "hello from a plugin"})
    assert (outcome.exit_code, outcome.stdout) == (0, "hello from a plugin\n")


def test_unknown_plugin_is_127() -> None:
    outcome = run("no-such-command", kind="plugin")
    assert outcome.exit_code == 127
    assert outcome.stderr == "devctl: unknown command 'no-such-command'\n"


def test_plugin_uses_the_same_interpreter() -> None:
    launch = plan_launch(spec("echo", kind="plugin", params={"a": 1}))
    assert launch.argv == [sys.executable, "-m", "devctl_dist.runners.plugin_host", "echo", '{"a": 1}']


def test_without_pidfd_a_thread_watches_exit(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Kernels or sandboxes without pidfd_open: same outcomes through the thread fallback."""

    def no_pidfd(pid: int, flags: int = 0) -> int:
        raise OSError(38, "Function not implemented")

    monkeypatch.setattr(os, "pidfd_open", no_pidfd)
    assert run("exit 5").exit_code == 5
    pid_file = tmp_path / "pid"
    outcome = run(f"sleep 60 & echo $! > {pid_file}; wait", timeout=0.5)
    assert outcome.timed_out and outcome.exit_code == -signal.SIGTERM
    assert not alive(read_pids(pid_file)[0])
