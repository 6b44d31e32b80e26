"""An in-memory runner: scripted outcomes, no processes (like dramatiq's ``StubBroker``).

Each attempt of a step follows a ``Script``: it "runs" for ``duration`` seconds
of loop time and then reports its exit code, or, with ``duration=None``, runs
until the test calls ``finish(name, ...)``. The runner records every start,
end and cancellation with loop timestamps and the peak number of attempts in
flight, so a test can drive any interleaving deterministically in
milliseconds (on a virtual-time loop, in no wall time at all).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from devctl_dist.runners.base import OutputSink, StepOutcome, StepSpec


@dataclass(frozen=True)
class Script:
    """What one attempt does: how long it runs and how it ends."""

    exit_code: int = 0
    duration: float | None = 0.0  # None: until ``finish`` is called
    timed_out: bool = False
    stdout: str = ""
    stderr: str = ""


@dataclass(frozen=True)
class Attempt:
    """One attempt as the runner saw it (loop times)."""

    name: str
    attempt: int
    started: float
    ended: float | None = None
    how: str = "running"  # "exit N", "timed_out", "cancelled"


@dataclass
class InMemoryRunner:
    """Runs nothing; reports what the scripts say. Honours cancellation like a real runner."""

    scripts: Mapping[str, Sequence[Script]] = field(default_factory=dict)
    default: Script = Script()
    name: str = "memory"
    attempts: list[Attempt] = field(default_factory=list)
    running: dict[str, int] = field(default_factory=dict)
    peak: int = 0
    _manual: dict[str, asyncio.Future[Script]] = field(default_factory=dict)
    _started: asyncio.Event | None = None

    async def start(self) -> None:
        """Nothing to connect to."""

    async def close(self) -> None:
        """Nothing to release."""

    @property
    def started(self) -> list[str]:
        """Names of steps whose first attempt ran, in start order."""
        return [a.name for a in self.attempts if a.attempt == 1]

    def script(self, name: str, attempt: int) -> Script:
        plan = self.scripts.get(name, ())
        return plan[attempt - 1] if attempt <= len(plan) else (plan[-1] if plan else self.default)

    async def run(self, spec: StepSpec, output: OutputSink | None = None) -> StepOutcome:
        loop = asyncio.get_running_loop()
        index = len(self.attempts)
        self.attempts.append(Attempt(spec.name, spec.attempt, loop.time()))
        self.running[spec.name] = spec.attempt
        self.peak = max(self.peak, len(self.running))
        if self._started is not None:
            self._started.set()
        script = self.script(spec.name, spec.attempt)
        try:
            if script.duration is None:
                future: asyncio.Future[Script] = loop.create_future()
                self._manual[spec.name] = future
                script = await future
            elif script.duration > 0:
                await asyncio.sleep(script.duration)
        except asyncio.CancelledError:
            self._end(index, "cancelled")
            raise
        self._end(index, "timed_out" if script.timed_out else f"exit {script.exit_code}")
        if output is not None:  # all at the end: scripted steps print instantly
            for stream, text in (("stdout", script.stdout), ("stderr", script.stderr)):
                for line in text.splitlines():
                    output.step_output(spec.name, stream, line)
        return StepOutcome(
            exit_code=script.exit_code, stdout=script.stdout, stderr=script.stderr, timed_out=script.timed_out
        )

    def finish(self, name: str, exit_code: int = 0, *, timed_out: bool = False, stdout: str = "") -> None:
        """End a step whose script said ``duration=None``."""
        self._manual.pop(name).set_result(Script(exit_code, 0.0, timed_out, stdout))

    def is_running(self, name: str) -> bool:
        return name in self.running

    async def wait_running(self, *names: str) -> None:
        """Wait until every named step has an attempt in flight."""
        while not all(n in self.running for n in names):
            self._started = asyncio.Event()
            await self._started.wait()

    def _end(self, index: int, how: str) -> None:
        attempt = self.attempts[index]
        loop = asyncio.get_running_loop()
        self.attempts[index] = Attempt(attempt.name, attempt.attempt, attempt.started, loop.time(), how)
        self.running.pop(attempt.name, None)
