"""Results of steps, parallel blocks and whole runs.

Plain dataclasses so they serialise to JSON without help (``to_dict``) and can
cross the Celery boundary as JSON.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
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

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["status"] = self.status.value
        return data


@dataclass(repr=False)
class ParallelBlockResult:
    """Aggregate of one parallel block (the seed's fields plus status)."""

    name: str | None
    success: bool
    steps: list[StepResult]
    failed_count: int
    succeeded_count: int
    status: StepStatus = StepStatus.SUCCEEDED
    duration: float = 0.0

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
            "duration": self.duration,
            "steps": [s.to_dict() for s in self.steps],
        }


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
            "mode": self.mode,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "duration": self.duration,
            "counts": self.counts(),
            "steps": [s.to_dict() for s in self.steps.values()],
            "blocks": [b.to_dict() for b in self.blocks],
        }
