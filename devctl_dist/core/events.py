"""Scheduler events and the listener interface.

The scheduler never prints: it calls listeners (live table, plain log, JSON
result, run-state store). A listener that raises must not break a run, so the
bus logs and drops listener errors.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from devctl_dist.core.results import ParallelBlockResult, RunResult, StepResult

log = logging.getLogger(__name__)


class RunListener:
    """Base listener: override the events you care about."""

    def run_started(self, workflow: str, run_id: str, mode: str, step_names: list[str]) -> None:
        """A run begins; ``step_names`` lists every step the run may start."""

    def block_started(self, block: str, step_names: list[str]) -> None:
        """A parallel block (or the whole DAG, block ``"dag"``) begins."""

    def step_started(self, name: str, attempt: int, block: str | None) -> None:
        """An attempt of a step was handed to the runner."""

    def step_output(self, name: str, stream: str, line: str) -> None:
        """A running step printed ``line`` (no newline) on ``stream`` (``"stdout"`` or ``"stderr"``).

        Called for every line as it arrives, from the runner: keep it cheap.
        """

    def step_retrying(self, name: str, attempt: int, delay: float, error: str | None) -> None:
        """Attempt ``attempt`` failed; the next one starts after ``delay`` seconds."""

    def step_finished(self, result: StepResult) -> None:
        """A step reached its final state (including skipped and cancelled)."""

    def block_finished(self, result: ParallelBlockResult) -> None:
        """A parallel block (or the DAG) ended."""

    def run_finished(self, result: RunResult) -> None:
        """The run ended; ``result`` is final."""


class EventBus(RunListener):
    """Fans each event out to every listener, isolating their failures."""

    def __init__(self, listeners: Iterable[RunListener] = ()) -> None:
        self.listeners = list(listeners)

    def _emit(self, event: str, *args: object) -> None:
        for listener in self.listeners:
            try:
                getattr(listener, event)(*args)
            except Exception:  # a broken display must never break a deploy
                log.exception("listener %r failed on %s", listener, event)

    def run_started(self, workflow: str, run_id: str, mode: str, step_names: list[str]) -> None:
        self._emit("run_started", workflow, run_id, mode, step_names)

    def block_started(self, block: str, step_names: list[str]) -> None:
        self._emit("block_started", block, step_names)

    def step_started(self, name: str, attempt: int, block: str | None) -> None:
        self._emit("step_started", name, attempt, block)

    def step_output(self, name: str, stream: str, line: str) -> None:
        self._emit("step_output", name, stream, line)

    def step_retrying(self, name: str, attempt: int, delay: float, error: str | None) -> None:
        self._emit("step_retrying", name, attempt, delay, error)

    def step_finished(self, result: StepResult) -> None:
        self._emit("step_finished", result)

    def block_finished(self, result: ParallelBlockResult) -> None:
        self._emit("block_finished", result)

    def run_finished(self, result: RunResult) -> None:
        self._emit("run_finished", result)
