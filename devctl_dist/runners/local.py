"""LocalRunner: run one step as a process tree on this machine.

The same code runs steps for ``devctl run`` and inside Celery workers
(``asyncio.run(LocalRunner().run(spec))``), so it keeps no loop state between
calls and offers ``kill_all()`` for a worker's signal handlers.

Shell steps go through ``/bin/sh -c``, except a command without any shell
syntax whose first word is not a shell builtin or keyword: that one is
executed directly, as make does, saving a shell per step.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import re
import shutil
import signal
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass

from devctl_dist.runners.base import OutputSink, StepOutcome, StepSpec
from devctl_dist.runners.process import StepProcess, ensure_child_status
from devctl_dist.runners.proctree import RUN_ID_ENV, new_token
from devctl_dist.runners.spawn import SpawnJob, Started, spawn, step_environment, submit, with_token

SHELL = "/bin/sh"

# ``sh -c _CD_AND_EXEC sh DIR ARGV...``: run ARGV in DIR.
_CD_AND_EXEC = 'cd -- "$1" && shift && exec "$@"'

# Anything the shell would interpret (quotes, expansions, redirections,
# operators, globs, comments, assignments) sends the command through sh.
_SHELL_SYNTAX = re.compile(r"[|&;<>()$`\\\"'*?\[\]#~=%{}\n\r\v\f]")

# Words sh handles itself: keywords, special builtins and builtins whose
# behaviour differs from the program of the same name (dash's echo, printf,
# test, pwd and kill are not coreutils'); ``true`` and ``false`` run directly.
_SHELL_WORDS_TEXT = """
! { } [[ ]] . : alias bg break case cd command continue do done elif else esac eval exec exit
export fc fg fi for function getopts hash if in jobs let local read readonly return select set
shift source then time times trap type ulimit umask unalias unset until wait while
echo printf test pwd kill
"""
SHELL_WORDS = frozenset(_SHELL_WORDS_TEXT.split())


@dataclass(frozen=True)
class Launch:
    """How to start a step: argv, and the word to blame if exec fails (direct only)."""

    argv: list[str]
    direct_word: str | None = None


def plan_launch(spec: StepSpec) -> Launch:
    """Choose the argv for ``spec``: a plugin host, a direct exec, or ``sh -c``.

    ``posix_spawn`` cannot change directory, so a step with a ``cwd`` starts a
    shell that changes into it and execs the step (keeping the signal
    defaults ``posix_spawn`` set, which ``Popen(cwd=...)`` would not).
    """
    if spec.kind == "plugin":
        params = json.dumps(spec.params, default=str)
        launch = Launch([sys.executable, "-m", "devctl_dist.runners.plugin_host", spec.command, params])
    else:
        words = direct_words(spec.command)
        launch = Launch([SHELL, "-c", spec.command]) if words is None else Launch(words, direct_word=words[0])
    if spec.cwd is None:
        return launch
    return Launch([SHELL, "-c", _CD_AND_EXEC, "sh", spec.cwd, *launch.argv])


def direct_words(command: str) -> list[str] | None:
    """The command's words if it can be exec'd without a shell, else ``None``."""
    if _SHELL_SYNTAX.search(command):
        return None
    words = command.replace("\t", " ").split(" ")
    words = [word for word in words if word]
    if not words or words[0] in SHELL_WORDS:
        return None
    return words


class LocalRunner:
    """Runs each step in its own session; kills the whole group on timeout or cancel."""

    name = "local"

    def __init__(self, kill_grace: float = 3.0, drain_timeout: float = 2.0) -> None:
        self.kill_grace = kill_grace
        self.drain_timeout = drain_timeout
        self._running: dict[int, StepProcess] = {}
        self._kills = 0  # kill_all calls so far: a step whose spawn was in flight during one is killed too
        self._kill_signal: int = signal.SIGKILL

    async def start(self) -> None:
        """Nothing to acquire (processes are spawned per step); make exit codes observable."""
        ensure_child_status()

    async def close(self) -> None:
        """Kill anything still running (normally nothing); never raises."""
        self.kill_all()

    def running_pgids(self) -> list[int]:
        """Process groups of the steps running now (pid == pgid: each is a session leader)."""
        return [pgid for pgid, proc in list(self._running.items()) if not proc.exited]

    def kill_all(self, sig: int = signal.SIGKILL) -> None:
        """Signal the whole tree of every running step; synchronous, safe in a signal handler."""
        self._kills += 1
        self._kill_signal = sig
        for proc in list(self._running.values()):
            proc.cancelled = True
            proc.signal_tree(sig)

    async def run(self, spec: StepSpec, output: OutputSink | None = None) -> StepOutcome:
        """Run one attempt; honours ``spec.timeout`` and task cancellation; lines go to ``output``."""
        ensure_child_status()
        launch = plan_launch(spec)
        token = new_token()
        if spec.cwd is not None and not os.path.isdir(spec.cwd):
            now = time.time()
            message = f"working directory not found: {spec.cwd}"
            return StepOutcome(
                exit_code=None, stderr=message + "\n", started_at=now, ended_at=now, error=message
            )
        started_at = time.time()
        kills = self._kills
        try:
            env = step_environment({**spec.env, RUN_ID_ENV: spec.run_id})  # the marker is added at spawn
            started = await self._spawn(launch, env, spec, token, output)
        except (OSError, ValueError) as error:
            return _spawn_failure(launch, error, started_at)
        proc = self._process(started, spec, token, output)
        if self._kills != kills:  # kill_all ran while this step was being spawned
            proc.cancelled = True
            proc.signal_tree(self._kill_signal)
        try:
            await self._supervise(proc, spec.timeout)
        finally:
            self._running.pop(proc.pid, None)
            proc.close()
        return StepOutcome(
            exit_code=proc.returncode,
            stdout=proc.stdout.text(),
            stderr=proc.stderr.text(),
            timed_out=proc.timed_out,
            started_at=started_at,
            ended_at=proc.ended_at,
            error=proc.error,
        )

    async def _spawn(
        self,
        launch: Launch,
        env: Mapping[bytes, bytes],
        spec: StepSpec,
        token: str,
        output: OutputSink | None,
    ) -> Started:
        """Start the step's process (off the loop's thread when possible); a cancel kills what it started."""
        executable = None
        word = launch.direct_word
        if word is not None and "/" not in word and "PATH" in spec.env:
            executable = shutil.which(word, path=spec.env["PATH"])
            if executable is None:
                raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), word)
        job = submit(launch.argv, env, executable, token)
        try:
            return await job.future
        except asyncio.CancelledError:
            await self._stop_spawned(job, spec, token, output)
            raise
        except OSError as error:
            if word is None or error.errno != errno.ENOEXEC:
                raise
            # A script without a #! line: sh runs such files itself.
            return spawn([SHELL, "-c", spec.command], with_token(env, token))

    async def _stop_spawned(
        self, job: SpawnJob, spec: StepSpec, token: str, output: OutputSink | None
    ) -> None:
        """Cancelled while its spawn was in flight: once it returns, stop the step like any cancelled one."""
        again = False
        while not job.settled:
            try:
                await job.wait_settled()
            except asyncio.CancelledError:
                again = True
        if job.result is None:
            return
        proc = self._process(job.result, spec, token, output)
        try:
            if again:
                proc.kill_now()
            else:
                await self._abort(proc)
        finally:
            self._running.pop(proc.pid, None)
            proc.close()

    def _process(
        self, started: Started, spec: StepSpec, token: str, output: OutputSink | None
    ) -> StepProcess:
        """Watch a spawned step: exit, output, and its place in ``running_pgids``/``kill_all``."""
        pid, out_fd, err_fd = started
        on_line = None
        if output is not None:
            name, sink = spec.name, output.step_output

            def on_line(stream: str, line: str) -> None:
                sink(name, stream, line)

        proc = StepProcess(pid, out_fd, err_fd, spec.output_limit, self.drain_timeout, token, on_line)
        self._running[pid] = proc
        return proc

    async def _supervise(self, proc: StepProcess, timeout: float | None) -> None:
        """Wait for the step; on cancellation kill its group, reap it, re-raise."""
        timer = None
        if timeout is not None:
            timer = asyncio.get_running_loop().call_later(timeout, proc.expire, self.kill_grace)
        try:
            await proc.wait()
            if proc.survivors:
                await proc.wait_group_gone(self.kill_grace)
        except asyncio.CancelledError:
            await self._abort(proc)
            raise
        finally:
            if timer is not None:
                timer.cancel()

    async def _abort(self, proc: StepProcess) -> None:
        """SIGTERM, grace, SIGKILL; a second cancellation skips the grace."""
        proc.terminate(self.kill_grace)
        try:
            await proc.wait()
            await proc.wait_group_gone(self.kill_grace)
        except asyncio.CancelledError:
            proc.kill_now()
            raise


def _spawn_failure(launch: Launch, error: OSError | ValueError, started_at: float) -> StepOutcome:
    """Report an exec failure the way sh would (127 not found, 126 not executable)."""
    ended_at = time.time()
    word = launch.direct_word
    if isinstance(error, ValueError):  # a NUL in the command or the environment
        message = f"cannot start {launch.argv[0]}: {error}"
        return StepOutcome(
            None, stderr=message + "\n", started_at=started_at, ended_at=ended_at, error=message
        )
    if word is not None and error.errno in (errno.ENOENT, errno.ENOTDIR):
        return StepOutcome(
            127, stderr=f"sh: 1: {word}: not found\n", started_at=started_at, ended_at=ended_at
        )
    if word is not None and error.errno in (errno.EACCES, errno.EPERM, errno.EISDIR):
        return StepOutcome(
            126, stderr=f"sh: 1: {word}: Permission denied\n", started_at=started_at, ended_at=ended_at
        )
    message = f"cannot start {launch.argv[0]}: {error.strerror or error}"
    return StepOutcome(None, stderr=message + "\n", started_at=started_at, ended_at=ended_at, error=message)
