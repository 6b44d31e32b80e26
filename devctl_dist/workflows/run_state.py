"""What every step of one run shares, below the scheduler: results, records, limits, listeners."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from devctl_dist.core.events import EventBus
from devctl_dist.core.exceptions import InfrastructureError
from devctl_dist.core.results import StepResult, StepStatus
from devctl_dist.runners.base import StepRunner
from devctl_dist.workflows.capacity import Capacity
from devctl_dist.workflows.templating import TemplateRenderer


@dataclass
class RunState:
    """Final results, in-flight records and the run-wide admission queue of one run."""

    run_id: str
    runner: StepRunner
    renderer: TemplateRenderer
    events: EventBus
    env: dict[str, str]
    capacity: Capacity
    cwd: str | None = None
    results: dict[str, StepResult] = field(default_factory=dict)
    live: dict[str, StepResult] = field(default_factory=dict)
    reuse: dict[str, StepResult] = field(default_factory=dict)  # --resume: steps that already succeeded
    fault: InfrastructureError | None = None  # the first infrastructure failure: it ends the run
    on_fault: Callable[[InfrastructureError], None] | None = None

    def infrastructure_failed(self, error: InfrastructureError) -> None:
        """A runner lost what it needs (the broker): stop the whole run, it cannot go on."""
        if self.fault is None:
            self.fault = error
            if self.on_fault is not None:
                self.on_fault(error)

    def finish(self, result: StepResult) -> StepResult:
        """Record a step's final result once and announce it."""
        self.live.pop(result.name, None)
        if result.name not in self.results:
            self.results[result.name] = result
            self.events.step_finished(result)
        return self.results[result.name]

    def finish_block(self, result: StepResult) -> None:
        """Record a block node's result (for ``results[...]`` and conditions); blocks have their own event."""
        self.results.setdefault(result.name, result)


def skipped(name: str, reason: str, block: str | None = None) -> StepResult:
    """The result of a step that never started."""
    return StepResult(
        name=name, success=False, skipped=True, status=StepStatus.SKIPPED, skip_reason=reason, block=block
    )
