"""One command step, from its place in line to its final result: spec, attempts, cancellation.

The group driver (``parallel.py``) decides *whether* a step starts and when it
is cancelled; a ``StepRun`` carries that out: it renders the step into a
``StepSpec``, waits for admission (``capacity.py``), hands attempts to the
runner, retries with backoff and turns what happened into one ``StepResult``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

from devctl_dist.core.exceptions import CommandNotFoundError, DevctlError, InfrastructureError
from devctl_dist.core.results import StepResult, StepStatus
from devctl_dist.runners.base import StepOutcome, StepSpec
from devctl_dist.runners.commands import available_commands, split_command
from devctl_dist.runners.params import shell_command
from devctl_dist.workflows.capacity import Cap, Ticket
from devctl_dist.workflows.run_state import RunState, skipped
from devctl_dist.workflows.schema import WorkflowStepSchema

log = logging.getLogger(__name__)

MAX_RETRY_DELAY = 60.0


@dataclass(frozen=True)
class Stop:
    """Why a group stops its nodes: the state and reason for running steps, the reason for the others."""

    status: StepStatus
    reason: str
    pending: str


def retry_delay(step: WorkflowStepSchema, attempt: int) -> float:
    """Exponential backoff after failed attempt ``attempt``, capped (and safe for any attempt count)."""
    return min(step.retry_delay * 2.0 ** min(attempt - 1, 32), MAX_RETRY_DELAY)


def prepare_spec(state: RunState, step: WorkflowStepSchema, visible: Collection[str] | None) -> StepSpec:
    """Render a command step into what a runner executes; raises ``DevctlError`` on a bad template."""
    name = step.display_name
    command = step.command or ""

    def value(raw: Any) -> Any:
        if not isinstance(raw, str) or "{" not in raw:
            return raw
        return state.renderer.render(raw, step=name, results=state.results, allowed=visible)

    params = {key: value(raw) for key, raw in step.params.items()}
    env = dict(state.env)
    env.update({key: value(raw) for key, raw in step.env.items()})
    common: dict[str, Any] = {
        "run_id": state.run_id,
        "name": name,
        "env": env,
        "timeout": step.timeout,
        "queue": step.queue,
        "cwd": state.cwd,
    }
    if command.startswith("!"):
        try:
            text = shell_command(value(command[1:]), params)
        except ValueError as error:
            raise DevctlError(f"step '{name}': {error}") from None
        return StepSpec(command=text, kind="shell", **common)
    plugin, extra = split_command(value(command))
    if plugin not in available_commands():
        raise CommandNotFoundError(plugin)
    if extra:
        params.setdefault("args", extra)
    return StepSpec(command=plugin, kind="plugin", params=params, **common)


def failed_before_start(step: WorkflowStepSchema, block: str | None, error: str) -> StepResult:
    """A step that could not even be rendered (or whose condition is broken)."""
    status = StepStatus.FAILED_ALLOWED if step.on_failure != "fail" else StepStatus.FAILED
    return StepResult(name=step.display_name, success=False, error=error, status=status, block=block)


class StepRun:
    """One command step in flight. ``on_done`` receives its final result exactly once."""

    def __init__(
        self,
        state: RunState,
        step: WorkflowStepSchema,
        spec: StepSpec,
        *,
        block: str | None,
        caps: tuple[Cap, ...],
        on_done: Callable[[StepResult], None],
    ) -> None:
        self.state, self.step, self.spec, self.block = state, step, spec, block
        self.on_done = on_done
        self.stop: Stop | None = None
        self.task: asyncio.Task[StepOutcome] | None = None
        self.record = StepResult(name=spec.name, success=False, status=StepStatus.RUNNING, block=block)
        self.ticket: Ticket = state.capacity.request(caps, self._begin)

    @property
    def started(self) -> bool:
        return self.task is not None

    def cancel(self, stop: Stop) -> None:
        """Not started yet: skipped with ``stop.pending``. Running: killed, then final as ``stop.status``."""
        if self.task is None:
            self.state.capacity.withdraw(self.ticket)
            self._report(skipped(self.spec.name, stop.pending, self.block))
        elif not self.task.done():
            self.stop = stop
            self.task.cancel()

    def _begin(self) -> None:
        """Admitted: from here on the step counts as started (a cancel now reports ``cancelled``)."""
        self.record.started_at = time.time()
        self.record.attempts = self.spec.attempt = 1
        self.state.live[self.spec.name] = self.record
        self.state.events.step_started(self.spec.name, 1, self.block)
        self.task = asyncio.get_running_loop().create_task(self._attempts())
        self.task.add_done_callback(self._ended)

    async def _attempts(self) -> StepOutcome:
        step, spec, capacity = self.step, self.spec, self.state.capacity
        max_attempts = step.retries + 1
        attempt = 1
        while True:
            if attempt > 1:
                spec.attempt = self.record.attempts = attempt
                self.state.events.step_started(spec.name, attempt, self.block)
            outcome = await self.state.runner.run(spec, output=self.state.events)
            if outcome.succeeded or attempt >= max_attempts:
                return outcome
            delay = retry_delay(step, attempt)
            self.state.events.step_retrying(spec.name, attempt, delay, describe_failure(outcome, step))
            if delay > 0:
                await asyncio.sleep(delay)
            await capacity.next_start()
            attempt += 1

    def _ended(self, task: asyncio.Task[StepOutcome]) -> None:
        """The step's task is over (its processes are gone): report, then let the freed slot be used."""
        self.state.capacity.release(self.ticket)
        try:
            self._conclude(task)
        finally:
            self.state.capacity.dispatch()

    def _conclude(self, task: asyncio.Task[StepOutcome]) -> None:
        record = self.record
        record.ended_at = time.time()
        record.duration = max(0.0, record.ended_at - (record.started_at or record.ended_at))
        if task.cancelled():
            self._report(self._stopped(self.stop or Stop(StepStatus.CANCELLED, "cancelled", "")))
            return
        error = task.exception()
        if isinstance(error, InfrastructureError):  # the broker is gone: this step, and the run, cannot go on
            record.status, record.error = StepStatus.FAILED, str(error)
            self._report(record)
            self.state.infrastructure_failed(error)
            return
        if error is not None:  # a runner fault must not lose the step
            log.error("step %s failed inside devctl", self.spec.name, exc_info=error)
            record.status, record.error = StepStatus.FAILED, f"{type(error).__name__}: {error}"
            self._report(record)
            return
        outcome = task.result()
        if outcome.infrastructure:  # the runner lost the broker: the step failed, and the run cannot go on
            self._copy_output(outcome)
            record.status, record.error = StepStatus.FAILED, outcome.error or "infrastructure lost"
            self._report(record)
            self.state.infrastructure_failed(InfrastructureError(f"step '{self.spec.name}': {record.error}"))
            return
        if self.stop is not None and not outcome.succeeded:
            self._copy_output(outcome)
            self._report(self._stopped(self.stop))
            return
        self._report(self._from_outcome(outcome))

    def _stopped(self, stop: Stop) -> StepResult:
        self.record.status, self.record.error = stop.status, stop.reason
        return self.record

    def _copy_output(self, outcome: StepOutcome) -> None:
        record = self.record
        record.stdout, record.stderr = outcome.stdout, outcome.stderr
        record.exit_code, record.worker = outcome.exit_code, outcome.worker

    def _from_outcome(self, outcome: StepOutcome) -> StepResult:
        record, step = self.record, self.step
        self._copy_output(outcome)
        if outcome.succeeded:
            record.status, record.success = StepStatus.SUCCEEDED, True
            return record
        record.error = describe_failure(outcome, step)
        if step.on_failure != "fail":
            record.status = StepStatus.FAILED_ALLOWED
        elif outcome.timed_out:
            record.status = StepStatus.TIMED_OUT
        else:
            record.status = StepStatus.FAILED
        return record

    def _report(self, result: StepResult) -> None:
        self.on_done(self.state.finish(result))


def describe_failure(outcome: StepOutcome, step: WorkflowStepSchema) -> str:
    """Why an attempt failed, in a few words."""
    if outcome.error:
        return outcome.error
    if outcome.timed_out:
        return f"timed out after {step.timeout:g}s" if step.timeout else "timed out"
    return f"exit code {outcome.exit_code}"
