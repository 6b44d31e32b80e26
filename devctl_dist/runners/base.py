"""The runner interface: start one rendered step, report its outcome, cancel it.

A runner knows nothing of dependencies, failure modes or limits: the scheduler
owns every rule. ``StepSpec`` and ``StepOutcome`` are JSON-safe so the same
objects travel to Celery workers and back.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol

StepKind = Literal["shell", "plugin"]

DEFAULT_OUTPUT_LIMIT = 1024 * 1024


@dataclass
class StepSpec:
    """A step ready to run: templates rendered, params quoted into ``command``.

    ``kind == "shell"``: ``command`` runs through ``/bin/sh -c``.
    ``kind == "plugin"``: ``command`` is the devctl command name, ``params`` its arguments.
    """

    run_id: str
    name: str
    command: str
    kind: StepKind = "shell"
    params: dict[str, Any] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    timeout: float | None = None
    queue: str | None = None
    attempt: int = 1
    cwd: str | None = None
    output_limit: int = DEFAULT_OUTPUT_LIMIT
    secrets: list[str] = field(default_factory=list)  # values a worker masks in its log and stream

    @property
    def task_id(self) -> str:
        """Deterministic id of this attempt (also the Celery task id)."""
        return f"{self.run_id}:{self.name}:{self.attempt}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StepSpec:
        return cls(**data)


@dataclass
class StepOutcome:
    """What one attempt did. ``exit_code`` is negative when a signal killed it."""

    exit_code: int | None
    stdout: str = ""
    stderr: str = ""
    timed_out: bool = False
    started_at: float = 0.0
    ended_at: float = 0.0
    error: str | None = None
    worker: str | None = None
    infrastructure: bool = False  # failed for lack of the broker, not by the step: the run stops (exit 3)
    streamed: int = 0  # entries a worker pushed to the run's output stream (0: no lines to wait for)

    @property
    def succeeded(self) -> bool:
        return self.exit_code == 0 and not self.timed_out and self.error is None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StepOutcome:
        return cls(**data)


class OutputSink(Protocol):
    """Receives a running step's output line by line, as it arrives (``EventBus`` is one).

    ``stream`` is ``"stdout"`` or ``"stderr"``; ``line`` has no trailing newline
    (a line longer than ``MAX_LINE`` bytes arrives in pieces). Runners call it
    from the event loop's thread and keep only a bounded part of the output
    themselves, so the sink is where the full output goes (the run's log file).
    """

    def step_output(self, name: str, stream: str, line: str) -> None: ...


MAX_LINE = 64 * 1024


class StepRunner(Protocol):
    """Runs steps somewhere. Implementations: ``LocalRunner``, ``CeleryRunner``.

    ``run`` must honour asyncio cancellation: when the awaiting task is
    cancelled, the step's whole process tree is killed (or its remote task
    revoked with terminate) before ``CancelledError`` propagates.
    ``run`` enforces ``spec.timeout`` itself and reports it as ``timed_out``.
    """

    name: str

    async def start(self) -> None:
        """Acquire resources (connections); raise a ``DevctlError`` if impossible."""

    async def run(self, spec: StepSpec, output: OutputSink | None = None) -> StepOutcome:
        """Run one attempt to completion and return what happened; stream its lines to ``output``."""
        ...

    async def close(self) -> None:
        """Release resources; never raises."""
