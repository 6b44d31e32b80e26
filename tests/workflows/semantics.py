"""Helpers for the semantics suite: steps that log their own start/end times.

Every step command appends ``<name> start <epoch>`` and ``<name> end <epoch>``
to one log file, so assertions rest on what the processes did, not on what the
scheduler believes it did.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from devctl_dist.core.events import RunListener
from devctl_dist.runners.base import StepRunner
from devctl_dist.workflows.engine import WorkflowEngine
from devctl_dist.workflows.loader import load_workflow_text
from devctl_dist.workflows.results import RunResult
from tests.evidence import pid_alive, wait_gone

__all__ = ["pid_alive", "wait_gone"]

RunnerFactory = Callable[[], StepRunner]


def step(log: Path, name: str, sleep: float = 0.0, exit_code: int = 0, pidfile: bool = False) -> str:
    """A shell command that logs its start and end, sleeps, and exits with ``exit_code``."""
    parts = [f'echo "{name} start $(date +%s.%N)" >> {log}']
    if pidfile:
        parts.append(f"echo $$ > {log.parent / (name + '.pid')}")
    if sleep:
        parts.append(f"sleep {sleep}")
    parts.append(f'echo "{name} end $(date +%s.%N)" >> {log}')
    parts.append(f"exit {exit_code}")
    return "!" + "; ".join(parts)


@dataclass
class Span:
    start: float
    end: float | None


def spans(log: Path) -> dict[str, Span]:
    """Parse the step log into name -> (start, end)."""
    out: dict[str, Span] = {}
    if not log.exists():
        return out
    for line in log.read_text().splitlines():
        name, what, stamp = line.split()
        value = float(stamp)
        if what == "start":
            out[name] = Span(value, None)
        else:
            out[name].end = value
    return out


def max_overlap(log: Path) -> int:
    """The most steps that were running at one instant, from the steps' own clocks."""
    events: list[tuple[float, int]] = []
    for span in spans(log).values():
        events.append((span.start, 1))
        events.append((span.end if span.end is not None else float("inf"), -1))
    running = peak = 0
    for _, delta in sorted(events, key=lambda e: (e[0], e[1])):
        running += delta
        peak = max(peak, running)
    return peak


def read_pid(path: Path) -> int:
    return int(path.read_text().split()[0])


def run_text(
    text: str,
    runner: StepRunner,
    tmp_path: Path,
    listeners: Sequence[RunListener] = (),
    **engine_kwargs: object,
) -> RunResult:
    """Load a workflow from text and run it to completion on ``runner``."""
    source = tmp_path / "workflow.yaml"
    source.write_text(text)
    workflow = load_workflow_text(text, str(source))
    engine = WorkflowEngine(
        workflow, runner=runner, listeners=listeners, cwd=os.fspath(tmp_path), **engine_kwargs
    )  # type: ignore[arg-type]
    return asyncio.run(engine.run_async())


def run_workflow(data: dict[str, object], runner: StepRunner, tmp_path: Path, **kwargs: object) -> RunResult:
    """Dump ``data`` as YAML (exact quoting for shell commands) and run it."""
    import yaml

    return run_text(yaml.safe_dump(data, sort_keys=False), runner, tmp_path, **kwargs)  # type: ignore[arg-type]
