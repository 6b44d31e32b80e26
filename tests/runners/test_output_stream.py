"""Runners hand each output line to the sink as it arrives; memory stays bounded, nothing is lost."""

from __future__ import annotations

import asyncio
import resource
import time

from devctl_dist.runners.base import MAX_LINE, StepSpec
from devctl_dist.runners.local import LocalRunner
from devctl_dist.runners.memory import InMemoryRunner, Script


class Sink:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str, str, float]] = []
        self.bytes = 0
        self.count = 0
        self.keep = True

    def step_output(self, name: str, stream: str, line: str) -> None:
        self.count += 1
        self.bytes += len(line) + 1
        if self.keep:
            self.lines.append((name, stream, line, time.monotonic()))


def run(command: str, sink: Sink, **fields: object) -> tuple[float, float]:
    async def scenario() -> tuple[float, float]:
        started = time.monotonic()
        await LocalRunner().run(StepSpec("r", "step", command, **fields), output=sink)  # type: ignore[arg-type]
        return started, time.monotonic()

    return asyncio.run(scenario())


def test_lines_arrive_while_the_step_runs_and_streams_are_told_apart() -> None:
    sink = Sink()
    _, ended = run("echo first; echo oops >&2; sleep 1.5; printf last", sink)
    assert [(s, line) for _, s, line, _ in sink.lines] == [
        ("stdout", "first"),
        ("stderr", "oops"),
        ("stdout", "last"),  # no trailing newline: still a line
    ]
    first_seen = sink.lines[0][3]
    assert ended - first_seen > 1.0  # seen long before the step ended, not collected at the end
    assert {name for name, *_ in sink.lines} == {"step"}


def test_a_huge_line_arrives_in_pieces() -> None:
    sink = Sink()
    run(f"head -c {3 * MAX_LINE + 10} /dev/zero | tr '\\0' y", sink)
    assert [len(line) for _, _, line, _ in sink.lines] == [MAX_LINE, MAX_LINE, MAX_LINE, 10]


def test_fifty_megabytes_reach_the_sink_in_full_with_bounded_memory() -> None:
    sink = Sink()
    sink.keep = False
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    size = 50 * 1024 * 1024
    run(f"head -c {size} /dev/zero | tr '\\0' x | fold -w 99", sink)
    grown_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert sink.bytes == size + sink.count  # every byte, plus one newline per line
    assert sink.count == -(-size // 99)
    assert grown_kb < 20 * 1024


def test_in_memory_runner_reports_scripted_lines() -> None:
    sink = Sink()
    runner = InMemoryRunner({"a": [Script(stdout="one\ntwo\n", stderr="bad\n")]})
    asyncio.run(runner.run(StepSpec("r", "a", "x"), output=sink))
    assert [(s, line) for _, s, line, _ in sink.lines] == [
        ("stdout", "one"),
        ("stdout", "two"),
        ("stderr", "bad"),
    ]
