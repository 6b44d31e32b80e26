"""Listeners driven by synthetic scheduler events; Rich renders into a StringIO terminal."""

from __future__ import annotations

import dataclasses
import io
import json
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from devctl_dist.core.exceptions import UsageError
from devctl_dist.core.output import (
    JsonListener,
    LiveTableListener,
    PlainListener,
    ResultsFileListener,
    finalize,
    format_duration,
    make_listeners,
)
from devctl_dist.workflows.results import ParallelBlockResult, RunResult, StepResult, StepStatus

STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}"


def step(name: str, status: StepStatus, **fields: object) -> StepResult:
    success = status in (StepStatus.SUCCEEDED, StepStatus.FAILED_ALLOWED)
    defaults: dict[str, object] = {"duration": 1.234, "exit_code": 0 if success else None, "attempts": 1}
    defaults.update(fields)
    return StepResult(name=name, success=success, status=status, **defaults)  # type: ignore[arg-type]


def run_result(steps: list[StepResult], *, success: bool, interrupted: bool = False) -> RunResult:
    return RunResult(
        workflow="deploy",
        run_id="deploy-1234",
        success=success,
        steps={s.name: s for s in steps},
        started_at=1000.0,
        ended_at=1003.5,
        interrupted=interrupted,
        mode="parallel",
    )


def block_result(name: str, steps: list[StepResult]) -> ParallelBlockResult:
    failed = sum(1 for s in steps if not s.status.ok)
    return ParallelBlockResult(
        name=name,
        success=failed == 0,
        steps=steps,
        status=StepStatus.SUCCEEDED if failed == 0 else StepStatus.FAILED,
        duration=2.5,
    )


FAILED_DEPLOY = step(
    "deploy",
    StepStatus.FAILED,
    exit_code=3,
    duration=1.01,
    stderr="error: connection refused\nretrying\nline3\nline4\nline5\nline6\nfinal: giving up\n",
)
SKIPPED_VERIFY = step("verify", StepStatus.SKIPPED, duration=0.0, skip_reason="dependency 'deploy' failed")


def terminal() -> tuple[Console, io.StringIO]:
    buffer = io.StringIO()
    return Console(file=buffer, force_terminal=True, width=120, color_system=None), buffer


def screen(raw: str) -> list[str]:
    """What a terminal shows after ``raw``: just enough VT100 (CR, LF, erase line, cursor up) for Live."""
    lines, row, col = [""], 0, 0
    for token in re.split(r"(\x1b\[[0-9;?]*[A-Za-z]|\r|\n)", raw):
        if token == "\n":
            row, col = row + 1, 0
            lines += [""] * (row + 1 - len(lines))
        elif token == "\r":
            col = 0
        elif token.startswith("\x1b["):
            if token.endswith("K"):
                lines[row] = ""
            elif token.endswith("A"):
                row = max(0, row - int(token[2:-1] or 1))
        elif token:
            line = lines[row].ljust(col)
            lines[row] = line[:col] + token + line[col + len(token) :]
            col += len(token)
    return [line for line in lines if line.strip()]


@pytest.fixture
def live_table() -> Iterator[Callable[..., tuple[LiveTableListener, io.StringIO]]]:
    """Live tables on a StringIO terminal, always stopped (a running Live hijacks sys.stdout)."""
    made: list[LiveTableListener] = []

    def make(**options: Any) -> tuple[LiveTableListener, io.StringIO]:
        console, buffer = terminal()
        made.append(LiveTableListener(console, **options))
        return made[-1], buffer

    yield make
    for listener in made:
        listener.close()


LiveFactory = Callable[..., tuple[LiveTableListener, io.StringIO]]


class FlushCounter(io.StringIO):
    """A real stream that also counts flushes, to prove each line is flushed."""

    flushes = 0

    def flush(self) -> None:
        self.flushes += 1
        super().flush()


# ---------------------------------------------------------------- plain lines


def test_plain_listener_writes_one_timestamped_flushed_line_per_event() -> None:
    stream = FlushCounter()
    listener = PlainListener(stream)
    listener.run_started("deploy", "deploy-1234", "parallel", ["build", "deploy", "verify"])
    listener.step_started("build", 1, None)
    listener.step_finished(step("build", StepStatus.SUCCEEDED, duration=1.234))
    listener.step_started("deploy", 1, None)
    listener.step_finished(FAILED_DEPLOY)
    listener.step_finished(SKIPPED_VERIFY)
    listener.run_finished(run_result([FAILED_DEPLOY, SKIPPED_VERIFY], success=False))

    lines = stream.getvalue().splitlines()
    assert all(re.match(STAMP + " ", line) for line in lines), lines
    bodies = [line.split(" ", 1)[1] for line in lines]
    assert bodies[0] == "RUN deploy run_id=deploy-1234 mode=parallel steps=3"
    assert "START build (attempt 1)" in bodies
    assert "OK build 1.23s" in bodies
    assert "FAIL deploy exit 3 1.01s: error: connection refused" in bodies
    assert "SKIP verify: dependency 'deploy' failed" in bodies
    assert bodies[-1].startswith("DONE deploy failed in 3.50s: ")
    tail = [b for b in bodies if b.startswith("  | ")]
    assert tail == ["  | line3", "  | line4", "  | line5", "  | line6", "  | final: giving up"]
    assert stream.flushes >= len(lines)


def test_plain_listener_reports_timeouts_retries_and_blocks() -> None:
    stream = io.StringIO()
    listener = PlainListener(stream)
    listener.block_started("Deploy all", ["a", "b"])
    listener.step_retrying("a", 1, 0.5, "exit 1\nmore")
    listener.step_finished(step("a", StepStatus.TIMED_OUT, duration=5.0))
    listener.step_finished(step("b", StepStatus.CANCELLED, duration=0.2, error="cancelled by fail_all"))
    listener.block_finished(block_result("Deploy all", [step("a", StepStatus.TIMED_OUT)]))
    text = stream.getvalue()
    assert "BLOCK Deploy all (2 steps)" in text
    assert "RETRY a attempt 1 failed, next in 0.50s: exit 1\n" in text
    assert "TIME a 5.00s: timed out" in text
    assert "CANC b 0.20s: cancelled by fail_all" in text
    assert "END BLOCK Deploy all FAIL 0 ok, 1 failed 2.50s" in text


# ---------------------------------------------------------------- JSON and result file


def test_json_listener_prints_only_the_result_document() -> None:
    stream = io.StringIO()
    listener = JsonListener(stream)
    listener.run_started("deploy", "deploy-1234", "parallel", ["deploy"])
    listener.step_started("deploy", 1, None)
    listener.step_finished(FAILED_DEPLOY)
    assert stream.getvalue() == ""
    result = run_result([FAILED_DEPLOY], success=False)
    listener.run_finished(result)
    document = json.loads(stream.getvalue())
    assert document == json.loads(json.dumps(result.to_dict()))
    assert document["steps"][0]["status"] == "failed"


def test_step_result_to_dict_has_every_field_with_the_status_as_text() -> None:
    result = step("deploy", StepStatus.FAILED, error="exit code 2", stdout="out", worker="w1", block="b")
    expected = dataclasses.asdict(result)
    expected["status"] = "failed"
    assert result.to_dict() == expected
    assert list(result.to_dict()) == [f.name for f in dataclasses.fields(StepResult)]


def test_results_file_listener_writes_partial_results_of_an_interrupted_run(tmp_path: Path) -> None:
    target = tmp_path / "result.json"
    listener = ResultsFileListener(target)
    cancelled = step("slow", StepStatus.CANCELLED, error="run interrupted")
    listener.run_finished(run_result([cancelled], success=False, interrupted=True))
    document = json.loads(target.read_text())
    assert document["interrupted"] is True
    assert document["steps"][0]["status"] == "cancelled"
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]  # no temporary file left


def test_results_file_in_a_missing_directory_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="does not exist"):
        ResultsFileListener(tmp_path / "nope" / "result.json")


# ---------------------------------------------------------------- live table


def test_live_table_shows_block_rows_glyphs_summary_and_failure_tail(live_table: LiveFactory) -> None:
    listener, buffer = live_table(refresh_per_second=20)
    listener.run_started("deploy", "deploy-1234", "parallel", ["api", "worker", "deploy", "verify"])
    listener.block_started("Deploy all services", ["api", "worker", "deploy", "verify"])
    for name in ("api", "worker", "deploy"):
        listener.step_started(name, 1, "Deploy all services")
    listener.step_finished(step("api", StepStatus.SUCCEEDED, duration=12.3))
    listener.step_finished(FAILED_DEPLOY)
    listener.step_finished(step("worker", StepStatus.CANCELLED, duration=8.5))
    listener.step_finished(SKIPPED_VERIFY)
    listener.block_finished(block_result("Deploy all services", [FAILED_DEPLOY]))
    listener.run_finished(run_result([FAILED_DEPLOY, SKIPPED_VERIFY], success=False))

    text = buffer.getvalue()
    assert "Parallel Execution: Deploy all services" in text
    final_table = text[text.rindex("Parallel Execution") :]
    for expected in ("[OK]", "12.3s", "[FAIL]", "1.01s", "[CANC]", "[SKIP]", "Step", "Status", "Duration"):
        assert expected in final_table
    assert "--- deploy: exit 3" in text
    assert "final: giving up" in text
    assert "Run failed: " in text
    assert "in 3.50s" in text


def test_live_table_durations_tick_while_a_step_runs(live_table: LiveFactory) -> None:
    listener, buffer = live_table(refresh_per_second=20)
    listener.block_started("dag", ["slow"])
    listener.step_started("slow", 1, "dag")
    time.sleep(0.6)
    listener.close()
    frames = re.findall(r"\[\.\.\.\][^\d\n]+(\d+\.\d\d)s", buffer.getvalue())
    assert len(set(frames)) >= 2, frames  # several refreshes, each with a later duration
    assert max(float(f) for f in frames) >= 0.3


def test_live_table_prints_one_line_per_sequential_step(live_table: LiveFactory) -> None:
    listener, buffer = live_table(refresh_per_second=20)
    listener.step_started("build", 1, None)
    time.sleep(0.3)
    assert re.fullmatch(
        r"\[\.\.\.\]\s+build  0\.\d\ds", screen(buffer.getvalue())[-1]
    )  # ticking while it runs
    listener.step_finished(step("build", StepStatus.SUCCEEDED, duration=1.5))
    listener.step_retrying("lint", 1, 1.0, "exit code 1")
    listener.step_started("lint", 2, None)
    listener.step_finished(step("lint", StepStatus.FAILED_ALLOWED, exit_code=1, stderr="warn: style\n"))
    listener.step_finished(step("docs", StepStatus.SKIPPED, skip_reason="condition is false"))
    lines = screen(buffer.getvalue())
    assert re.fullmatch(r"\[OK\]\s+build  1\.50s", lines[0])
    assert lines[1] == "[RETRY] lint attempt 1 failed: exit code 1"
    assert re.fullmatch(r"\[ALLOW\] lint  1\.23s  exit 1", lines[2])
    assert lines[3] == "--- lint: exit 1"
    assert lines[4].strip() == "warn: style"
    assert lines[5] == "[SKIP]  docs  condition is false"
    assert len(lines) == 6  # the running lines were transient


def test_live_table_stays_bounded_and_cheap_with_thousands_of_rows(live_table: LiveFactory) -> None:
    listener, buffer = live_table(refresh_per_second=8, max_rows=20)
    names = [f"step-{i:04d}" for i in range(3000)]
    started = time.perf_counter()
    listener.block_started("dag", names)
    for name in names[:2990]:
        listener.step_started(name, 1, "dag")
        status = StepStatus.FAILED if name == "step-0005" else StepStatus.SUCCEEDED
        listener.step_finished(step(name, status, duration=0.01))
    for name in names[2990:2995]:
        listener.step_started(name, 1, "dag")
    assert listener._view is not None
    for _ in range(50):  # what 50 refreshes cost
        listener.console.print(listener._view)
    elapsed = time.perf_counter() - started
    listener.close()
    assert elapsed < 5.0, elapsed
    last_frame = buffer.getvalue().split("Dependency graph")[-1]
    rows = [line for line in last_frame.splitlines() if "step-" in line]
    assert len(rows) <= 20
    assert sum("[...]" in row for row in rows) == 5  # every running step is visible
    assert "step-2989" in last_frame  # the last finished ones too
    assert re.search(r"step-0005 .*\[FAIL\]", last_frame)  # and an old failure stays in sight
    assert re.search(r"… 2981 more.*5 \[WAIT\] 2976 \[OK\]", last_frame), last_frame[-600:]


def test_nested_blocks_join_the_outer_table_under_their_own_row(live_table: LiveFactory) -> None:
    listener, buffer = live_table()
    listener.block_started("dag", ["a", "tests", "z"])
    listener.block_started("tests", ["unit", "lint"])
    for name in ("unit", "lint"):
        listener.step_started(name, 1, "tests")
        listener.step_finished(step(name, StepStatus.SUCCEEDED, duration=0.5))
    listener.block_finished(block_result("tests", [step("unit", StepStatus.SUCCEEDED)]))
    assert listener._live is not None  # still showing the outer table
    listener.block_finished(block_result("dag", []))
    assert listener._live is None
    frame = screen(buffer.getvalue())
    rows = [re.sub(r"[│┃]", "|", line) for line in frame if line.startswith("│")]
    names = [row.split("|")[1].rstrip() for row in rows]
    assert names == [" a", " tests", "   unit", "   lint", " z"]
    assert "[OK]" in rows[1] and "2.50s" in rows[1]  # the block's own row got its result
    assert "Parallel Execution: tests" not in buffer.getvalue()


# ---------------------------------------------------------------- selection and finalize


def test_make_listeners_picks_by_output_and_terminal(tmp_path: Path) -> None:
    stream = io.StringIO()
    assert [type(x) for x in make_listeners("table", results_file=None, stream=stream, is_tty=True)] == [
        LiveTableListener
    ]
    assert [type(x) for x in make_listeners("table", results_file=None, stream=stream, is_tty=False)] == [
        PlainListener
    ]
    assert [type(x) for x in make_listeners("plain", results_file=None, stream=stream, is_tty=True)] == [
        PlainListener
    ]
    chosen = make_listeners("json", results_file=str(tmp_path / "r.json"), stream=stream, is_tty=True)
    assert sorted(type(x).__name__ for x in chosen) == ["JsonListener", "ResultsFileListener"]
    with pytest.raises(UsageError):
        make_listeners("xml", results_file=None, stream=stream, is_tty=False)


def test_finalize_delivers_the_result_once_and_closes_the_display(
    tmp_path: Path, live_table: LiveFactory
) -> None:
    stream = io.StringIO()
    live, _ = live_table()
    live.block_started("dag", ["a"])
    json_listener = JsonListener(stream)
    result = run_result([step("a", StepStatus.SUCCEEDED)], success=True)
    json_listener.run_finished(result)
    file_listener = ResultsFileListener(tmp_path / "r.json")
    finalize([json_listener, file_listener, live], result)
    assert stream.getvalue().count('"run_id"') == 1
    assert json.loads((tmp_path / "r.json").read_text())["success"] is True
    assert live._live is None


@pytest.mark.parametrize(
    ("seconds", "text"), [(0.5, "0.50s"), (12.34, "12.3s"), (125, "2m05s"), (3725, "1h02m")]
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_live_table_shows_each_running_steps_latest_line_and_a_failed_steps_streamed_tail(
    live_table: LiveFactory,
) -> None:
    listener, buffer = live_table(refresh_per_second=50)
    listener.run_started("deploy", "deploy-1234", "parallel", ["api", "web"])
    listener.block_started("ship", ["api", "web"])
    listener.step_started("api", 1, "ship")
    listener.step_started("web", 1, "ship")
    for index in range(12):
        listener.step_output("api", "stdout", f"api line {index}")
    listener.step_output("web", "stderr", "web is compiling")
    time.sleep(0.2)  # a few refreshes of the live table
    running = buffer.getvalue()
    assert "api line 11" in running and "web is compiling" in running and "Output" in running
    failed = step("api", StepStatus.FAILED, exit_code=2, stdout="only the first MiB")
    listener.step_finished(failed)
    listener.step_finished(step("web", StepStatus.SUCCEEDED))
    listener.block_finished(block_result("ship", [failed]))
    tail = buffer.getvalue()[buffer.getvalue().index("--- api: exit 2") :]
    shown = [int(n) for n in re.findall(r"^\s+api line (\d+)\s*$", tail, re.MULTILINE)]
    assert shown == list(range(2, 12))  # the last 10 lines it streamed, not its stored stdout


def test_quiet_shows_states_only() -> None:
    out = io.StringIO()
    listener = PlainListener(out, quiet=True)
    listener.step_output("build", "stdout", "compiling")
    listener.step_finished(step("build", StepStatus.FAILED, exit_code=1, stderr="boom\nbang\n"))
    assert "compiling" not in out.getvalue() and "FAIL build exit 1" in out.getvalue()
    assert "bang" not in out.getvalue()
    loud = io.StringIO()
    PlainListener(loud).step_output("build", "stderr", "warning: x")
    assert re.fullmatch(STAMP + r" build ! warning: x\n", loud.getvalue())
