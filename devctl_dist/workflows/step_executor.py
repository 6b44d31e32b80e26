"""Run one command step: condition, rendering, slots, rate limit, attempts.

The group scheduler (``parallel.py``) decides *when* a step may start; this
module decides *how*: it renders the step into a ``StepSpec``, waits for a
concurrency slot and the rate limiter, hands attempts to the runner and turns
their outcomes into one ``StepResult``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

from devctl_dist.core.async_utils import RateLimiter
from devctl_dist.core.events import EventBus
from devctl_dist.core.exceptions import CommandNotFoundError, DevctlError
from devctl_dist.runners.base import StepOutcome, StepRunner, StepSpec
from devctl_dist.runners.commands import available_commands, split_command
from devctl_dist.runners.params import shell_command
from devctl_dist.workflows.results import StepResult, StepStatus
from devctl_dist.workflows.schema import WorkflowStepSchema
from devctl_dist.workflows.templating import TemplateRenderer

MAX_RETRY_DELAY = 60.0


@dataclass
class RunState:
    """Everything the steps of one run share: final results and in-flight records."""

    run_id: str
    runner: StepRunner
    renderer: TemplateRenderer
    events: EventBus
    env: dict[str, str]
    slots: asyncio.Semaphore
    limiter: RateLimiter | None = None
    results: dict[str, StepResult] = field(default_factory=dict)
    live: dict[str, StepResult] = field(default_factory=dict)
    benign_skips: set[str] = field(default_factory=set)
    cwd: str | None = None

    def is_benign(self, result: StepResult) -> bool:
        """Succeeded, failure allowed, or skipped only because a condition was false."""
        return result.status.ok or result.name in self.benign_skips

    def finish(self, result: StepResult) -> StepResult:
        """Record a final result once and announce it."""
        self.live.pop(result.name, None)
        if result.name not in self.results:
            self.results[result.name] = result
            self.events.step_finished(result)
        return self.results[result.name]


@dataclass(frozen=True)
class Admission:
    """What a step must pass to start, and whom it tells of its end while it still holds its slot.

    Telling the group before the slot is released closes a race: otherwise a
    queued sibling could grab the freed slot and start after a failure that
    should have stopped it.
    """

    caps: tuple[asyncio.Semaphore, ...] = ()
    gates: tuple[Callable[[], str | None], ...] = ()
    on_done: Callable[[StepResult], None] | None = None

    def stop_reason(self) -> str | None:
        for gate in self.gates:
            reason = gate()
            if reason:
                return reason
        return None

    def nested(
        self,
        cap: asyncio.Semaphore | None,
        gate: Callable[[], str | None],
        on_done: Callable[[StepResult], None],
    ) -> Admission:
        caps = self.caps if cap is None else (*self.caps, cap)
        return Admission(caps, (*self.gates, gate), on_done)


OPEN = Admission()


def skipped(name: str, reason: str, block: str | None = None) -> StepResult:
    return StepResult(
        name=name, success=False, skipped=True, status=StepStatus.SKIPPED, skip_reason=reason, block=block
    )


class StepExecutor:
    """Turns a step definition into attempts on the runner."""

    def __init__(self, state: RunState) -> None:
        self.state = state

    async def execute(
        self,
        step: WorkflowStepSchema,
        *,
        block: str | None,
        allowed: Collection[str] | None,
        admission: Admission = OPEN,
    ) -> StepResult:
        """Run ``step`` to a final result. Cancellation propagates; ``state.live`` tells how far it got."""
        name = step.display_name
        verdict = self.check_condition(step, block, allowed)
        if verdict is not None:
            return verdict
        try:
            spec = self._prepare(step, allowed)
        except DevctlError as error:
            return self._failed_before_start(step, block, str(error))
        held: list[asyncio.Semaphore] = []
        try:
            for cap in (*admission.caps, self.state.slots):
                await cap.acquire()
                held.append(cap)
            reason = admission.stop_reason()
            if reason is None and self.state.limiter is not None:
                await self.state.limiter.acquire()
                reason = admission.stop_reason()
            if reason is not None:
                return skipped(name, reason, block)
            result = await self._attempts(step, spec, block)
            if admission.on_done is not None:
                admission.on_done(result)
            return result
        finally:
            for cap in reversed(held):
                cap.release()

    def check_condition(
        self, step: WorkflowStepSchema, block: str | None, allowed: Collection[str] | None
    ) -> StepResult | None:
        """``None`` when the step may run; else its final result (skipped, or failed on a bad condition)."""
        if step.condition is None:
            return None
        try:
            go = self.state.renderer.judge(
                step.condition, step=step.display_name, results=self.state.results, allowed=allowed
            )
        except DevctlError as error:
            return self._failed_before_start(step, block, str(error))
        if go:
            return None
        self.state.benign_skips.add(step.display_name)
        return skipped(step.display_name, f"condition is false: {step.condition}", block)

    def _prepare(self, step: WorkflowStepSchema, allowed: Collection[str] | None) -> StepSpec:
        name = step.display_name
        render = self.state.renderer
        command = step.command or ""

        def value(raw: Any) -> Any:
            if not isinstance(raw, str) or "{" not in raw:
                return raw
            return render.render(raw, step=name, results=self.state.results, allowed=allowed)

        params = {key: value(raw) for key, raw in step.params.items()}
        env = dict(self.state.env)
        env.update({key: value(raw) for key, raw in step.env.items()})
        common: dict[str, Any] = {
            "run_id": self.state.run_id,
            "name": name,
            "env": env,
            "timeout": step.timeout,
            "queue": step.queue,
            "cwd": self.state.cwd,
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

    async def _attempts(self, step: WorkflowStepSchema, spec: StepSpec, block: str | None) -> StepResult:
        name = spec.name
        record = StepResult(name=name, success=False, status=StepStatus.RUNNING, block=block)
        record.started_at = time.time()
        self.state.live[name] = record
        max_attempts = step.retries + 1
        outcome = StepOutcome(exit_code=None)
        for attempt in range(1, max_attempts + 1):
            spec.attempt = attempt
            record.attempts = attempt
            self.state.events.step_started(name, attempt, block)
            outcome = await self.state.runner.run(spec)
            if outcome.succeeded or attempt == max_attempts:
                break
            delay = min(step.retry_delay * 2 ** (attempt - 1), MAX_RETRY_DELAY)
            self.state.events.step_retrying(name, attempt, delay, _describe_failure(outcome, step))
            if delay > 0:
                await asyncio.sleep(delay)
            if self.state.limiter is not None:
                await self.state.limiter.acquire()
        return _from_outcome(record, outcome, step)

    def _failed_before_start(self, step: WorkflowStepSchema, block: str | None, error: str) -> StepResult:
        allowed = step.on_failure != "fail"
        status = StepStatus.FAILED_ALLOWED if allowed else StepStatus.FAILED
        return StepResult(name=step.display_name, success=False, error=error, status=status, block=block)


def _describe_failure(outcome: StepOutcome, step: WorkflowStepSchema) -> str:
    if outcome.error:
        return outcome.error
    if outcome.timed_out:
        return f"timed out after {step.timeout:g}s" if step.timeout else "timed out"
    return f"exit code {outcome.exit_code}"


def _from_outcome(record: StepResult, outcome: StepOutcome, step: WorkflowStepSchema) -> StepResult:
    record.stdout = outcome.stdout
    record.stderr = outcome.stderr
    record.exit_code = outcome.exit_code
    record.worker = outcome.worker
    record.ended_at = time.time()
    record.duration = max(0.0, record.ended_at - (record.started_at or record.ended_at))
    if outcome.succeeded:
        record.status = StepStatus.SUCCEEDED
        record.success = True
        return record
    record.error = _describe_failure(outcome, step)
    if step.on_failure != "fail":
        record.status = StepStatus.FAILED_ALLOWED
    elif outcome.timed_out:
        record.status = StepStatus.TIMED_OUT
    else:
        record.status = StepStatus.FAILED
    return record
