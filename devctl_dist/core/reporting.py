"""Output that needs no terminal: shared formatting, plain log lines, JSON, the result file.

Split from ``output.py`` (the only module that imports Rich) so the plain and
machine-readable listeners stay importable and small. ``output.py`` re-exports
everything here; import from there.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import IO

from devctl_dist.core.events import RunListener
from devctl_dist.core.exceptions import UsageError
from devctl_dist.core.results import ParallelBlockResult, RunResult, StepResult, StepStatus

TAIL_LINES = 5

# Status glyphs (the seed's display) and the Rich style the live table gives each.
GLYPHS: dict[StepStatus, tuple[str, str]] = {
    StepStatus.PENDING: ("[WAIT]", "dim"),
    StepStatus.RUNNING: ("[...]", "yellow"),
    StepStatus.SUCCEEDED: ("[OK]", "green"),
    StepStatus.FAILED: ("[FAIL]", "bold red"),
    StepStatus.FAILED_ALLOWED: ("[ALLOW]", "yellow"),
    StepStatus.TIMED_OUT: ("[TIME]", "red"),
    StepStatus.CANCELLED: ("[CANC]", "magenta"),
    StepStatus.SKIPPED: ("[SKIP]", "dim"),
}


def shows_output(status: StepStatus) -> bool:
    """Steps whose output tail we show: failures that ran, and allowed failures (not cancellations)."""
    return status in (StepStatus.FAILED, StepStatus.TIMED_OUT, StepStatus.FAILED_ALLOWED)


_EXIT_CODE_ERROR = re.compile(r"(exit(ed)?( with)?( code| status)?:? -?\d+)", re.IGNORECASE)


# ---------------------------------------------------------------- formatting helpers


def format_duration(seconds: float) -> str:
    """``1.23s`` under a minute, ``2m03s`` under an hour, then ``1h02m``."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.2f}s" if seconds < 10 else f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def _lines(text: str | None) -> list[str]:
    return [line.rstrip() for line in (text or "").splitlines() if line.strip()]


def output_tail(result: StepResult, count: int = TAIL_LINES) -> list[str]:
    """The last lines of stderr (stdout when stderr is empty): usually why a step failed."""
    return (_lines(result.stderr) or _lines(result.stdout))[-count:]


def step_reason(result: StepResult) -> str:
    """A short why for a non-successful step: exit code, timeout, skip reason or error."""
    if result.status is StepStatus.SKIPPED:
        return result.skip_reason or result.error or "skipped"
    if result.status is StepStatus.TIMED_OUT:
        return "timed out"
    if result.status is StepStatus.CANCELLED:
        return result.error or "cancelled"
    if result.exit_code is not None and result.exit_code != 0:
        return f"exit {result.exit_code}"
    return result.error or ""


def first_problem_line(result: StepResult) -> str:
    """One line for a log: stderr's first line, else the error (unless it only repeats the exit code)."""
    lines = _lines(result.stderr)
    if lines:
        return lines[0]
    error = _lines(result.error)
    if error and not _EXIT_CODE_ERROR.fullmatch(error[0]):
        return error[0]
    stdout = _lines(result.stdout)
    return stdout[0] if stdout else ""


def summary_counts(counts: dict[str, int]) -> str:
    """``3 succeeded, 1 failed`` in a stable order."""
    order = [status.value for status in GLYPHS]
    parts = [f"{counts[key]} {key}" for key in order if counts.get(key)]
    return ", ".join(parts) or "no steps"


def run_outcome(result: RunResult) -> str:
    if result.interrupted:
        return "interrupted"
    return "succeeded" if result.success else "failed"


# ---------------------------------------------------------------- listener base


class OutputListener(RunListener):
    """Base of devctl's listeners: remembers whether the run's end was seen.

    ``finalize`` uses that to deliver the final result exactly once, even when
    the engine ended without a ``run_finished`` event.
    """

    finished: bool = False

    def run_finished(self, result: RunResult) -> None:
        self.finished = True

    def close(self) -> None:
        """Release the display (stop a live table); safe to call twice."""


def finalize(listeners: Iterable[RunListener], result: RunResult | None) -> None:
    """Deliver ``result`` to listeners that missed ``run_finished``, then close them all."""
    for listener in listeners:
        if not isinstance(listener, OutputListener):
            continue
        try:
            if result is not None and not listener.finished:
                listener.run_finished(result)
        finally:
            listener.close()


# ---------------------------------------------------------------- plain lines


_PLAIN_WORDS: dict[StepStatus, str] = {
    StepStatus.SUCCEEDED: "OK",
    StepStatus.FAILED: "FAIL",
    StepStatus.FAILED_ALLOWED: "ALLOW",
    StepStatus.TIMED_OUT: "TIME",
    StepStatus.CANCELLED: "CANC",
    StepStatus.SKIPPED: "SKIP",
    StepStatus.PENDING: "PEND",
    StepStatus.RUNNING: "RUN",
}


STREAM_MARKS = {"stdout": "|", "stderr": "!"}


class PlainListener(OutputListener):
    """Timestamped lines, one per event, flushed at once: for pipes, CI logs and ``tail -f``.

    Each output line of a step is printed as it arrives, prefixed with the step's
    name (``build | text`` for stdout, ``build ! text`` for stderr), like
    ``docker compose up``. ``quiet`` prints states only.
    """

    def __init__(self, stream: IO[str], *, quiet: bool = False) -> None:
        self.stream = stream
        self.quiet = quiet
        self.streamed: set[str] = set()  # steps whose output was already printed line by line

    def step_output(self, name: str, stream: str, line: str) -> None:
        if self.quiet:
            return
        self.streamed.add(name)
        self._line(f"{name} {STREAM_MARKS.get(stream, '|')} {line}")

    def _line(self, text: str) -> None:
        stamp = datetime.now().isoformat(timespec="milliseconds")
        self.stream.write(f"{stamp} {text}\n")
        self.stream.flush()

    def run_started(self, workflow: str, run_id: str, mode: str, step_names: list[str]) -> None:
        self._line(f"RUN {workflow} run_id={run_id} mode={mode} steps={len(step_names)}")

    def block_started(self, block: str, step_names: list[str]) -> None:
        self._line(f"BLOCK {block} ({len(step_names)} steps)")

    def step_started(self, name: str, attempt: int, block: str | None) -> None:
        self._line(f"START {name} (attempt {attempt})")

    def step_retrying(self, name: str, attempt: int, delay: float, error: str | None) -> None:
        why = f": {error.splitlines()[0]}" if error and error.strip() else ""
        self._line(f"RETRY {name} attempt {attempt} failed, next in {delay:.2f}s{why}")

    def step_finished(self, result: StepResult) -> None:
        word = _PLAIN_WORDS[result.status]
        if result.status is StepStatus.SKIPPED:
            self._line(f"SKIP {result.name}: {step_reason(result)}")
            return
        parts = [word, result.name]
        if result.exit_code not in (None, 0):
            parts.append(f"exit {result.exit_code}")
        parts.append(format_duration(result.duration))
        line = " ".join(parts)
        problem = first_problem_line(result) if not result.success else ""
        if result.status is StepStatus.TIMED_OUT and not problem:
            problem = "timed out"
        self._line(f"{line}: {problem}" if problem else line)
        if self.quiet or result.name in self.streamed:  # states only, or its lines were printed already
            self.streamed.discard(result.name)
            return
        tail = output_tail(result) if shows_output(result.status) else []
        if tail != [problem]:  # a one-line stderr is already on the line above
            for text in tail:
                self._line(f"  | {text}")

    def block_finished(self, result: ParallelBlockResult) -> None:
        self._line(
            f"END BLOCK {result.name or 'block'} {_PLAIN_WORDS[result.status]} "
            f"{result.succeeded_count} ok, {result.failed_count} failed {format_duration(result.duration)}"
        )

    def run_finished(self, result: RunResult) -> None:
        super().run_finished(result)
        self._line(
            f"DONE {result.workflow} {run_outcome(result)} in {format_duration(result.duration)}: "
            f"{summary_counts(result.counts())}"
        )


# ---------------------------------------------------------------- JSON


def result_json(result: RunResult) -> str:
    return json.dumps(result.to_dict(), indent=2, default=str)


class JsonListener(OutputListener):
    """Prints the final ``RunResult`` as one JSON document and nothing else."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream

    def run_finished(self, result: RunResult) -> None:
        super().run_finished(result)
        self.stream.write(result_json(result) + "\n")
        self.stream.flush()


class ResultsFileListener(OutputListener):
    """Writes the JSON result file when the run ends, partial results included.

    The write goes through a temporary file and a rename, so a reader never sees
    half a document. The directory is checked up front: a typo in the path must
    fail before the deploy runs, not after.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        parent = self.path.parent
        if not parent.is_dir():
            raise UsageError(f"--results-file {self.path}: directory '{parent}' does not exist")

    def run_finished(self, result: RunResult) -> None:
        super().run_finished(result)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(result_json(result) + "\n")
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
