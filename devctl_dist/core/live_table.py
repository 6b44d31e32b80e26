"""The live table ``devctl run`` shows on a terminal: one Rich Live table per parallel block or DAG.

The only module that imports Rich (``output.py`` picks the listeners and
re-exports ``LiveTableListener`` and ``make_console``).
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import chain
from typing import IO, Any

from rich.console import Console, ConsoleOptions, RenderResult
from rich.live import Live
from rich.table import Table
from rich.text import Text

from devctl_dist.core.reporting import (
    GLYPHS,
    OutputListener,
    format_duration,
    output_tail,
    run_outcome,
    shows_output,
    step_reason,
    summary_counts,
)
from devctl_dist.core.results import ParallelBlockResult, RunResult, StepResult, StepStatus

MAX_FAILURE_DETAILS = 10
MAX_LINE_SHOWN = 80
TAIL_LINES = 10
DEFAULT_REFRESH_PER_SECOND = 6.0


# ---------------------------------------------------------------- live table


@dataclass
class _Row:
    name: str
    status: StepStatus = StepStatus.PENDING
    started: float | None = None
    duration: float = 0.0
    attempt: int = 1
    depth: int = 0
    last: str = ""  # the latest output line while it runs


class _BlockView:
    """The rows of one live block; renders at most ``max_rows`` rows so 10,000 stay cheap.

    Events mutate it from the scheduler's thread while Live renders it from its
    refresh thread, hence the lock. Rendering touches only running rows, the
    last finished ones and per-status counters, never every row.
    """

    def __init__(self, title: str, names: Iterable[str], max_rows: int, *, quiet: bool = False) -> None:
        self.title = title
        self.quiet = quiet
        self.max_rows = max(3, max_rows)
        self.rows: dict[str, _Row] = {}
        self.running: dict[str, None] = {}
        self.recent: deque[str] = deque(maxlen=self.max_rows)
        self.failed: deque[str] = deque(maxlen=self.max_rows)
        self.counts: Counter[StepStatus] = Counter()
        self.lock = threading.Lock()
        self.add(names)

    def add(self, names: Iterable[str]) -> None:
        with self.lock:
            for name in names:
                self._row(name)

    def add_block(self, block: str, names: Iterable[str]) -> None:
        """A nested block starts: its row runs and its steps appear indented below it."""
        with self.lock:
            parent = self.rows.get(block)
            if parent is None:
                for name in names:
                    self._row(name)
                return
            self._start(parent, 1)
            fresh = [_Row(name, depth=parent.depth + 1) for name in names if name not in self.rows]
            self.counts[StepStatus.PENDING] += len(fresh)
            rows: dict[str, _Row] = {}
            for name, row in self.rows.items():
                rows[name] = row
                if row is parent:
                    rows.update((child.name, child) for child in fresh)
            self.rows = rows

    def finish_block(self, result: ParallelBlockResult) -> None:
        if result.name is not None and result.name in self.rows:
            self.finish(result.name, result.status, result.duration)

    def _row(self, name: str) -> _Row:
        row = self.rows.get(name)
        if row is None:
            row = self.rows[name] = _Row(name)
            self.counts[StepStatus.PENDING] += 1
        return row

    def _set_status(self, row: _Row, status: StepStatus) -> None:
        self.counts[row.status] -= 1
        self.counts[status] += 1
        row.status = status

    def start(self, name: str, attempt: int) -> None:
        with self.lock:
            self._start(self._row(name), attempt)

    def output(self, name: str, line: str) -> None:
        row = self.rows.get(name)
        if row is not None:
            row.last = line[:MAX_LINE_SHOWN]  # one attribute store: no lock needed

    def finish(self, name: str, status: StepStatus, duration: float) -> None:
        with self.lock:
            row = self._row(name)
            row.duration, row.last = duration, ""
            self._set_status(row, status)
            self.running.pop(name, None)
            self.recent.append(name)
            if shows_output(status):
                self.failed.append(name)

    def _start(self, row: _Row, attempt: int) -> None:
        row.attempt = attempt
        if row.started is None:
            row.started = time.monotonic()
        self._set_status(row, StepStatus.RUNNING)
        self.running[row.name] = None

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        with self.lock:  # snapshot under the lock; never yield while holding it
            table = self.table()
        yield Text(self.title, style="bold")  # above, not inside: a narrow table would wrap it
        yield table

    def table(self) -> Table:
        """Build the table (caller holds the lock)."""
        table = Table(expand=False)
        table.add_column("Step", overflow="fold")
        table.add_column("Status", no_wrap=True)
        table.add_column("Duration", justify="right", no_wrap=True)
        if not self.quiet:
            table.add_column(
                "Output", no_wrap=True, overflow="ellipsis", max_width=MAX_LINE_SHOWN, style="dim"
            )
        now = time.monotonic()
        shown = self._visible_rows()
        for row in shown:
            cells = self._cells(row, now)
            table.add_row(*(cells if self.quiet else (*cells, Text(row.last))))
        hidden = len(self.rows) - len(shown)
        if hidden > 0:
            summary = Text(self._hidden_summary(shown), style="dim")
            table.add_row(Text(f"… {hidden} more", style="dim"), summary, *([""] * (1 if self.quiet else 2)))
        return table

    def _visible_rows(self) -> list[_Row]:
        if len(self.rows) <= self.max_rows:
            return list(self.rows.values())
        budget = self.max_rows - 1
        names = list(self.running)[:budget]
        chosen = set(names)
        for name in chain(reversed(self.failed), reversed(self.recent)):  # failures matter most
            if len(names) >= budget:
                break
            if name not in chosen:
                names.append(name)
                chosen.add(name)
        return [self.rows[name] for name in names]

    def _hidden_summary(self, shown: list[_Row]) -> str:
        hidden = Counter(self.counts)
        for row in shown:
            hidden[row.status] -= 1
        parts = [f"{hidden[status]} {glyph}" for status, (glyph, _) in GLYPHS.items() if hidden[status] > 0]
        return " ".join(parts)

    @staticmethod
    def _cells(row: _Row, now: float) -> tuple[Text, Text, str]:
        label = "  " * row.depth + (row.name if row.attempt <= 1 else f"{row.name} (attempt {row.attempt})")
        glyph, style = GLYPHS[row.status]
        if row.status is StepStatus.RUNNING and row.started is not None:
            duration = format_duration(now - row.started)
        elif row.status.is_final and row.status is not StepStatus.SKIPPED:
            duration = format_duration(row.duration)
        else:
            duration = ""
        return Text(label), Text(glyph, style=style), duration


def _block_label(name: str | None) -> str:
    return "dependency graph" if name == "dag" else name or "parallel block"


class _RunningStep:
    """The one line a running sequential step shows (transient: replaced by its result line)."""

    def __init__(self, name: str, attempt: int) -> None:
        self.label = name if attempt <= 1 else f"{name} (attempt {attempt})"
        self.started = time.monotonic()
        self.last = ""

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        glyph, style = GLYPHS[StepStatus.RUNNING]
        line = Text.assemble(
            (f"{glyph:<8}", style), self.label, f"  {format_duration(time.monotonic() - self.started)}"
        )
        if self.last:
            line.append(f"  {self.last}", style="dim")
        line.truncate(options.max_width, overflow="ellipsis")
        yield line


class LiveTableListener(OutputListener):
    """A Rich Live table per parallel block / DAG; one line per sequential step.

    Nested blocks join the table of the block that contains them. Failed steps
    get the tail of their output printed below the table once it stops.
    """

    def __init__(
        self,
        console: Console,
        *,
        refresh_per_second: float = DEFAULT_REFRESH_PER_SECOND,
        max_rows: int | None = None,
        quiet: bool = False,
    ) -> None:
        self.console = console
        self.quiet = quiet
        self._tails: dict[str, deque[str]] = {}  # recent lines of running steps: shown if they fail
        self.refresh_per_second = refresh_per_second
        self.max_rows = max_rows or max(8, console.size.height - 8)
        self.workflow = "workflow"
        self._view: _BlockView | None = None
        self._live: Live | None = None
        self._running_line: Live | None = None
        self._depth = 0
        self._block_failures: list[StepResult] = []
        self._seen_tails: dict[str, list[str]] = {}  # failed steps' last lines, as streamed

    def run_started(self, workflow: str, run_id: str, mode: str, step_names: list[str]) -> None:
        self.workflow = workflow
        header = Text.assemble(
            ("Running ", "bold"), (workflow, "bold cyan"), f" ({mode}, {len(step_names)} steps, run {run_id})"
        )
        self.console.print(header)

    def block_started(self, block: str, step_names: list[str]) -> None:
        self._stop_running_line()
        self._depth += 1
        if self._view is not None:
            self._view.add_block(block, step_names)
            return
        title = f"Dependency graph: {self.workflow}" if block == "dag" else f"Parallel Execution: {block}"
        self._view = _BlockView(title, step_names, self.max_rows, quiet=self.quiet)
        self._block_failures = []
        self._live = Live(
            self._view, console=self.console, refresh_per_second=self.refresh_per_second, transient=False
        )
        self._live.start()

    def step_started(self, name: str, attempt: int, block: str | None) -> None:
        if self._view is not None:
            self._view.start(name, attempt)
            return
        self._stop_running_line()
        self._running_line = Live(
            _RunningStep(name, attempt),
            console=self.console,
            refresh_per_second=self.refresh_per_second,
            transient=True,
        )
        self._running_line.start()

    def step_output(self, name: str, stream: str, line: str) -> None:
        if self.quiet:
            return
        tail = self._tails.get(name)
        if tail is None:
            tail = self._tails[name] = deque(maxlen=TAIL_LINES)
        tail.append(line)
        if self._view is not None:
            self._view.output(name, line)
        elif isinstance(self._running_line, Live) and isinstance(self._running_line.renderable, _RunningStep):
            self._running_line.renderable.last = line[:MAX_LINE_SHOWN]

    def step_retrying(self, name: str, attempt: int, delay: float, error: str | None) -> None:
        if self._view is None:
            self._stop_running_line()
            why = f": {error.splitlines()[0]}" if error and error.strip() else ""
            self.console.print(Text(f"{'[RETRY]':<8}{name} attempt {attempt} failed{why}", style="yellow"))

    def step_finished(self, result: StepResult) -> None:
        tail = self._tails.pop(result.name, None)
        if tail and shows_output(result.status):
            self._seen_tails[result.name] = list(tail)
        if self._view is not None:
            self._view.finish(result.name, result.status, result.duration)
            if shows_output(result.status):
                self._block_failures.append(result)
            return
        self._stop_running_line()
        glyph, style = GLYPHS[result.status]
        line = Text.assemble((f"{glyph:<8}", style), result.name)
        if result.status is not StepStatus.SKIPPED:
            line.append(f"  {format_duration(result.duration)}")
        reason = step_reason(result)
        if reason and result.status is not StepStatus.SUCCEEDED:
            line.append(f"  {reason}", style="dim")
        self.console.print(line)
        if shows_output(result.status):
            self._print_details([result])

    def block_finished(self, result: ParallelBlockResult) -> None:
        self._depth = max(0, self._depth - 1)
        if self._depth > 0 and self._view is not None:
            self._view.finish_block(result)
        elif self._depth == 0:
            self._stop_live()
            glyph, style = GLYPHS[result.status]
            self.console.print(
                Text.assemble(
                    (glyph, style),
                    f" {_block_label(result.name)}: {result.succeeded_count} ok, {result.failed_count} failed"
                    f" in {format_duration(result.duration)}",
                )
            )
            self._print_details(self._block_failures)
            self._block_failures = []

    def run_finished(self, result: RunResult) -> None:
        super().run_finished(result)
        self._stop_live()
        outcome = run_outcome(result)
        style = "bold green" if outcome == "succeeded" else "bold red"
        self.console.print(
            Text.assemble(
                (f"Run {outcome}", style),
                f": {summary_counts(result.counts())} in {format_duration(result.duration)}",
            )
        )

    def close(self) -> None:
        self._stop_live()

    def _stop_live(self) -> None:
        self._stop_running_line()
        live, self._live, self._view, self._depth = self._live, None, None, 0
        if live is not None:
            live.stop()

    def _stop_running_line(self) -> None:
        line, self._running_line = self._running_line, None
        if line is not None:
            line.stop()

    def _print_details(self, failures: list[StepResult]) -> None:
        if self.quiet:
            return
        for result in failures[:MAX_FAILURE_DETAILS]:
            tail = self._seen_tails.pop(result.name, None) or output_tail(result, TAIL_LINES)
            heading = f"--- {result.name}: {step_reason(result) or result.status.value}"
            self.console.print(Text(heading, style="red"))
            for line in tail:
                self.console.print(Text(f"    {line}", style="dim"))
        if len(failures) > MAX_FAILURE_DETAILS:
            more = len(failures) - MAX_FAILURE_DETAILS
            self.console.print(Text(f"--- and {more} more failed steps (see --results-file)", style="red"))


def make_console(stream: IO[str], is_tty: bool, **options: Any) -> Console:
    """A Console on ``stream`` that treats it as a terminal exactly when ``is_tty``."""
    return Console(file=stream, force_terminal=is_tty, **options)
