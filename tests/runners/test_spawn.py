"""Spawning off the loop's thread: the child is the same as ``os.posix_spawn``'s, and a step whose
spawn is still in flight is stopped by a cancel or ``kill_all`` like any running step."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from devctl_dist.runners.base import StepSpec
from devctl_dist.runners.local import LocalRunner
from devctl_dist.runners.proctree import RUN_ID_ENV, marked_pids
from devctl_dist.runners.spawn import RESET_SIGNALS, close_all, spawn, step_environment, submit

# Read by the spawned program itself (through a shell, /proc/$$ races with the shell's own forks).
PROBE = ["grep", "-E", "^(Pid|NSsid|SigBlk|SigIgn):", "/proc/self/status"]
STDIN = ["readlink", "/proc/self/fd/0"]


def read_all(fd: int) -> bytes:
    os.set_blocking(fd, True)
    data = b""
    while chunk := os.read(fd, 65536):
        data += chunk
    return data


def finish(started: tuple[int, int, int]) -> tuple[int, bytes]:
    pid, out_fd, err_fd = started
    output = read_all(out_fd)
    close_all(out_fd, err_fd)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), output


def probe(started: tuple[int, int, int]) -> list[str]:
    """What PROBE saw, once it is checked to be a session leader."""
    code, output = finish(started)
    assert code == 0
    fields = dict(line.split(":\t") for line in output.decode().splitlines())
    assert fields.pop("Pid") == fields.pop("NSsid")
    return [fields["SigBlk"], fields["SigIgn"]]


def test_threaded_spawn_gives_the_child_what_os_posix_spawn_gives() -> None:
    """New session, stdin /dev/null, nothing blocked, nothing ignored: on both paths."""
    env = step_environment({}, None)

    async def threaded(argv: list[str]) -> tuple[int, int, int]:
        return await submit(argv, env).future

    blocked, ignored = probe(asyncio.run(threaded(PROBE)))
    assert [blocked, ignored] == probe(spawn(PROBE, env))
    assert blocked == "0" * 16
    assert int(ignored, 16) & sum(1 << (sig - 1) for sig in RESET_SIGNALS) == 0
    assert finish(asyncio.run(threaded(STDIN))) == finish(spawn(STDIN, env)) == (0, b"/dev/null\n")


def test_spawn_errors_are_those_of_os_posix_spawn(tmp_path: Path) -> None:
    env = step_environment({}, None)

    async def threaded(argv: list[str]) -> BaseException:
        with pytest.raises((OSError, ValueError)) as caught:
            await submit(argv, env).future
        return caught.value

    for argv in (["no-such-program-devctl"], [str(tmp_path)], [str(tmp_path / "missing")], ["tr\0ue"]):
        with pytest.raises((OSError, ValueError)) as direct:
            spawn(argv, env)
        error = asyncio.run(threaded(argv))
        assert type(error) is type(direct.value)
        assert getattr(error, "errno", None) == getattr(direct.value, "errno", None)
        assert str(error).split(":")[0] == str(direct.value).split(":")[0]


def _leftovers(run_id: str) -> list[int]:
    return marked_pids(RUN_ID_ENV, run_id)


def test_a_step_cancelled_while_its_spawn_is_in_flight_is_stopped_before_the_cancel_returns() -> None:
    # A loop that spawned keeps a wake-up pipe until another loop spawns: warm up to count alike.
    asyncio.run(LocalRunner().run(StepSpec(run_id="warm", name="s", command="true")))
    fds_before = len(os.listdir("/proc/self/fd"))

    async def scenario() -> None:
        runner = LocalRunner(kill_grace=1.0)
        for index in range(20):
            run_id = f"spawn-cancel-{os.getpid()}-{index}"
            task = asyncio.create_task(runner.run(StepSpec(run_id=run_id, name="s", command="sleep 30")))
            await asyncio.sleep(0)  # the step has handed its spawn to a spawning thread
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert _leftovers(run_id) == []
            assert runner.running_pgids() == []

    asyncio.run(scenario())
    assert len(os.listdir("/proc/self/fd")) == fds_before


def test_kill_all_during_a_spawn_kills_the_step_it_was_starting() -> None:
    async def scenario() -> list[int | None]:
        runner = LocalRunner()
        codes: list[int | None] = []
        for index in range(10):
            spec = StepSpec(run_id=f"spawn-kill-{os.getpid()}-{index}", name="s", command="sleep 30")
            task = asyncio.create_task(runner.run(spec))
            await asyncio.sleep(0)
            runner.kill_all()
            codes.append((await asyncio.wait_for(task, 10)).exit_code)
        return codes

    assert asyncio.run(scenario()) == [-9] * 10


# The fork tests run in a fresh interpreter: forking the pytest process after other tests left
# threads behind (Celery apps, Redis clients) can deadlock the child in their after-fork hooks.
_FORK_SCRIPT = """
import asyncio, os, sys
from devctl_dist.runners.base import StepSpec
from devctl_dist.runners.local import LocalRunner
from devctl_dist.runners.proctree import new_token

async def step(command):
    return (await LocalRunner().run(StepSpec(run_id="forked", name="s", command=command))).stdout

assert asyncio.run(step("true")) == ""  # the spawning threads are running in the parent now
parent = {new_token() for _ in range(10_000)}
assert len(parent) == 10_000
read, write = os.pipe()
pid = os.fork()
if pid == 0:
    os.close(read)
    line = asyncio.run(step("echo forked")).strip() + " " + new_token() + "\\n"
    os.write(write, line.encode())
    os._exit(0)
os.close(write)
with os.fdopen(read) as pipe:
    output, token = pipe.read().split()
_, status = os.waitpid(pid, 0)
print(output, token[:16] != next(iter(parent))[:16], os.waitstatus_to_exitcode(status))
"""


def test_a_forked_child_spawns_with_its_own_threads_and_draws_its_own_tokens() -> None:
    """Celery's prefork pool forks after the parent may have spawned: the child starts its own threads.

    Step tokens are unique, and a forked child draws its own random prefix.
    """
    proc = subprocess.run([sys.executable, "-c", _FORK_SCRIPT], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["forked", "True", "0"]


def test_each_step_sees_the_environment_of_its_start_and_its_own_marker(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The C environment array is reused between steps: only while the environment is unchanged."""

    def printenv(name: str, **env: str) -> tuple[int | None, str]:
        spec = StepSpec(run_id="env", name="s", command=f"printenv {name}", env=env)
        outcome = asyncio.run(LocalRunner().run(spec))
        return outcome.exit_code, outcome.stdout

    monkeypatch.setenv("DEVCTL_TEST_VALUE", "one")
    assert printenv("DEVCTL_TEST_VALUE") == (0, "one\n")
    monkeypatch.setenv("DEVCTL_TEST_VALUE", "two")
    assert printenv("DEVCTL_TEST_VALUE") == (0, "two\n")
    assert printenv("DEVCTL_TEST_VALUE", DEVCTL_TEST_VALUE="three") == (0, "three\n")
    monkeypatch.delenv("DEVCTL_TEST_VALUE")
    assert printenv("DEVCTL_TEST_VALUE")[0] == 1
    markers = {printenv("DEVCTL_STEP_TOKEN")[1] for _ in range(5)}
    assert len(markers) == 5 and all(len(marker) > 16 for marker in markers)
    assert printenv("DEVCTL_RUN_ID") == (0, "env\n")
