"""Results of steps, parallel blocks and whole runs.

Plain dataclasses so they serialise to JSON without help (``to_dict``) and can
cross the Celery boundary as JSON.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class StepStatus(StrEnum):
    """Final (and transient) states of a step."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    FAILED_ALLOWED = "failed (allowed)"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"

    @property
    def is_final(self) -> bool:
        return self not in (StepStatus.PENDING, StepStatus.RUNNING)

    @property
    def ok(self) -> bool:
        """True when dependents may run: the step succeeded or its failure is allowed."""
        return self in (StepStatus.SUCCEEDED, StepStatus.FAILED_ALLOWED)

    @property
    def is_failure(self) -> bool:
        """The one definition of failure: what fails a block or run and triggers its failure policy.

        ``failed (allowed)`` is not a failure (``on_failure: continue``); a skip is
        judged by its cause, never by itself.
        """
        return self in (StepStatus.FAILED, StepStatus.TIMED_OUT, StepStatus.CANCELLED)


@dataclass
class StepResult:
    """What happened to one step (the seed's fields plus status bookkeeping)."""

    name: str
    success: bool
    skipped: bool = False
    error: str | None = None
    stdout: str | None = None
    stderr: str | None = None
    duration: float = 0.0
    status: StepStatus = StepStatus.PENDING
    exit_code: int | None = None
    attempts: int = 0
    started_at: float | None = None
    ended_at: float | None = None
    skip_reason: str | None = None
    block: str | None = None
    worker: str | None = None
    reused: bool = False  # taken from an earlier run by --resume, not run again

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict, spelled out: ``asdict`` deep-copies, 10x slower per step."""
        return {
            "name": self.name,
            "success": self.success,
            "skipped": self.skipped,
            "error": self.error,
            "stdout": self.stdout,
            "stderr": self.stderr,
            "duration": self.duration,
            "status": self.status.value,
            "exit_code": self.exit_code,
            "attempts": self.attempts,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "skip_reason": self.skip_reason,
            "block": self.block,
            "worker": self.worker,
            "reused": self.reused,
        }


@dataclass(repr=False)
class ParallelBlockResult:
    """Aggregate of one parallel block; the counts derive from ``steps`` so they can never disagree."""

    name: str | None
    success: bool
    steps: list[StepResult]
    status: StepStatus = StepStatus.SUCCEEDED
    duration: float = 0.0

    @property
    def succeeded_count(self) -> int:
        return sum(1 for step in self.steps if step.status is StepStatus.SUCCEEDED or step.success)

    @property
    def failed_count(self) -> int:
        return sum(1 for step in self.steps if step.status.is_failure or _failed_by_hand(step))

    @property
    def skipped_count(self) -> int:
        return sum(1 for step in self.steps if step.status is StepStatus.SKIPPED or step.skipped)

    @property
    def all_succeeded(self) -> bool:
        return all(step.success for step in self.steps)

    @property
    def any_succeeded(self) -> bool:
        return any(step.success for step in self.steps)

    def __repr__(self) -> str:  # short: asyncio reprs task results, and a block may hold 100k steps
        return (
            f"ParallelBlockResult(name={self.name!r}, status={self.status.value!r}, steps={len(self.steps)})"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "success": self.success,
            "status": self.status.value,
            "failed_count": self.failed_count,
            "succeeded_count": self.succeeded_count,
            "skipped_count": self.skipped_count,
            "duration": self.duration,
            "steps": [s.to_dict() for s in self.steps],
        }


def _failed_by_hand(step: StepResult) -> bool:
    """A result built by hand (seed API) has only ``success``/``skipped``; count it by those."""
    return step.status is StepStatus.PENDING and not step.success and not step.skipped


@dataclass(repr=False)
class RunResult:
    """Outcome of a whole workflow run."""

    workflow: str
    run_id: str
    success: bool
    steps: dict[str, StepResult] = field(default_factory=dict)
    blocks: list[ParallelBlockResult] = field(default_factory=list)
    started_at: float = 0.0
    ended_at: float = 0.0
    interrupted: bool = False
    mode: str = "sequential"
    signal: int | None = None  # the signal number that interrupted the run (SIGINT, SIGTERM)
    fault: str | None = None  # infrastructure lost mid-run (the broker): the run stopped, exit 3

    def __repr__(self) -> str:  # short: asyncio.run() reprs the main task's result
        return (
            f"RunResult(workflow={self.workflow!r}, run_id={self.run_id!r}, success={self.success}, "
            f"steps={len(self.steps)})"
        )

    @property
    def duration(self) -> float:
        return max(0.0, self.ended_at - self.started_at)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for result in self.steps.values():
            out[result.status.value] = out.get(result.status.value, 0) + 1
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "workflow": self.workflow,
            "run_id": self.run_id,
            "success": self.success,
            "interrupted": self.interrupted,
            "signal": self.signal,
            "fault": self.fault,
            "mode": self.mode,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "duration": self.duration,
            "counts": self.counts(),
            "steps": [s.to_dict() for s in self.steps.values()],
            "blocks": [b.to_dict() for b in self.blocks],
        }
