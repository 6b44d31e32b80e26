"""The semantics table of DESIGN.md for parallel blocks and DAGs, pinned row by row.

Each assertion rests on what the step processes wrote (start/end times, pids),
checked against /proc, with generous time bounds.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from devctl_dist.runners.base import StepRunner
from devctl_dist.workflows.results import StepStatus
from tests.workflows.semantics import max_overlap, read_pid, run_workflow, spans, step, wait_gone

Factory = Callable[[], StepRunner]


def block(log: Path, on_failure: str, steps: list[dict[str, object]], **extra: object) -> dict[str, object]:
    return {"steps": [{"parallel": {"name": "blk", "on_failure": on_failure, "steps": steps, **extra}}]}


def test_all_steps_succeed_and_overlap(make_runner: Factory, tmp_path: Path) -> None:
    log = tmp_path / "log"
    steps = [{"name": n, "command": step(log, n, sleep=1)} for n in ("a", "b", "c")]
    result = run_workflow(block(log, "fail_all", steps), make_runner(), tmp_path)
    assert result.success
    assert [result.steps[n].status for n in "abc"] == [StepStatus.SUCCEEDED] * 3
    s = spans(log)
    assert max(x.start for x in s.values()) < min(x.end or 0 for x in s.values())  # all ran at once
    assert result.blocks[0].succeeded_count == 3


def test_fail_all_kills_running_sibling_and_skips_pending(make_runner: Factory, tmp_path: Path) -> None:
    log = tmp_path / "log"
    steps = [
        {"name": "slow", "command": step(log, "slow", sleep=60, pidfile=True)},
        {"name": "bad", "command": step(log, "bad", sleep=0.5, exit_code=3)},
        {"name": "later", "command": step(log, "later")},
    ]
    data = block(log, "fail_all", steps, max_concurrent=2)
    data["steps"].append({"name": "after", "command": step(log, "after")})  # type: ignore[attr-defined]
    result = run_workflow(data, make_runner(), tmp_path)
    assert not result.success
    assert result.steps["bad"].status is StepStatus.FAILED and result.steps["bad"].exit_code == 3
    assert result.steps["slow"].status is StepStatus.CANCELLED
    assert result.steps["later"].status is StepStatus.SKIPPED
    assert result.steps["after"].status is StepStatus.SKIPPED
    assert wait_gone([read_pid(tmp_path / "slow.pid")]) == []
    assert result.duration < 30
    assert "later" not in spans(log) and "after" not in spans(log)


def test_continue_runs_everything_then_fails(make_runner: Factory, tmp_path: Path) -> None:
    log = tmp_path / "log"
    steps = [
        {"name": "bad", "command": step(log, "bad", exit_code=1)},
        {"name": "slow", "command": step(log, "slow", sleep=1)},
        {"name": "other", "command": step(log, "other", sleep=0.2)},
    ]
    result = run_workflow(block(log, "continue", steps, max_concurrent=1), make_runner(), tmp_path)
    assert not result.success
    assert result.steps["slow"].status is StepStatus.SUCCEEDED
    assert result.steps["other"].status is StepStatus.SUCCEEDED
    assert set(spans(log)) == {"bad", "slow", "other"}
    assert result.blocks[0].failed_count == 1


def test_complete_running_lets_running_finish_and_starts_nothing(
    make_runner: Factory, tmp_path: Path
) -> None:
    log = tmp_path / "log"
    steps = [
        {"name": "slow", "command": step(log, "slow", sleep=1.5)},
        {"name": "bad", "command": step(log, "bad", sleep=0.2, exit_code=2)},
        {"name": "pending", "command": step(log, "pending")},
    ]
    result = run_workflow(block(log, "complete_running", steps, max_concurrent=2), make_runner(), tmp_path)
    assert not result.success
    assert result.steps["slow"].status is StepStatus.SUCCEEDED
    assert spans(log)["slow"].end is not None
    assert result.steps["pending"].status is StepStatus.SKIPPED
    assert "pending" not in spans(log)


def test_block_timeout_kills_running_and_skips_pending(make_runner: Factory, tmp_path: Path) -> None:
    log = tmp_path / "log"
    steps = [{"name": f"s{i}", "command": step(log, f"s{i}", sleep=60, pidfile=True)} for i in range(3)]
    result = run_workflow(block(log, "fail_all", steps, max_concurrent=2, timeout=1), make_runner(), tmp_path)
    assert not result.success
    assert result.blocks[0].status is StepStatus.TIMED_OUT
    assert {result.steps[n].status for n in ("s0", "s1")} == {StepStatus.TIMED_OUT}
    assert result.steps["s2"].status is StepStatus.SKIPPED
    assert wait_gone([read_pid(tmp_path / f"s{i}.pid") for i in (0, 1)]) == []
    assert result.duration < 30


def test_step_timeout_kills_the_process_tree(make_runner: Factory, tmp_path: Path) -> None:
    log = tmp_path / "log"
    cmd = f"!sleep 60 & echo $! > {tmp_path}/child.pid; echo $$ > {tmp_path}/main.pid; wait"
    result = run_workflow({"steps": [{"name": "t", "command": cmd, "timeout": 1}]}, make_runner(), tmp_path)
    assert result.steps["t"].status is StepStatus.TIMED_OUT
    assert not result.success
    assert wait_gone([read_pid(tmp_path / "child.pid"), read_pid(tmp_path / "main.pid")]) == []
    assert result.steps["t"].duration < 20
    assert not log.exists()


def test_max_concurrent_never_exceeded(make_runner: Factory, tmp_path: Path) -> None:
    log = tmp_path / "log"
    steps = [{"name": f"s{i}", "command": step(log, f"s{i}", sleep=0.4)} for i in range(8)]
    data = block(log, "fail_all", steps)
    data["parallel"] = {"max_concurrent": 3}
    result = run_workflow(data, make_runner(), tmp_path)
    assert result.success, {n: (r.status.value, r.error or r.skip_reason) for n, r in result.steps.items()}
    assert max_overlap(log) <= 3
    assert max_overlap(log) >= 2  # it did run in parallel


def test_global_cap_holds_across_nested_blocks(make_runner: Factory, tmp_path: Path) -> None:
    log = tmp_path / "log"

    def blk(tag: str) -> dict[str, object]:
        inner = [{"name": f"{tag}{i}", "command": step(log, f"{tag}{i}", sleep=0.4)} for i in range(4)]
        return {"name": tag, "parallel": {"name": tag, "steps": inner}, "depends_on": ["root"]}

    data = {
        "parallel": {"max_concurrent": 3},
        "steps": [{"name": "root", "command": step(log, "root")}, blk("x"), blk("y")],
    }
    result = run_workflow(data, make_runner(), tmp_path)
    assert result.success
    assert max_overlap(log) <= 3


def test_rate_limit_spaces_starts(make_runner: Factory, tmp_path: Path) -> None:
    log = tmp_path / "log"
    steps = [{"name": f"s{i}", "command": step(log, f"s{i}")} for i in range(11)]
    data = block(log, "fail_all", steps)
    data["parallel"] = {"rate_limit": 5.0, "max_concurrent": 10}
    result = run_workflow(data, make_runner(), tmp_path)
    assert result.success
    starts = sorted(s.start for s in spans(log).values())
    assert starts[-1] - starts[0] >= 10 / 5 * 0.85  # 11 starts at 5/s need about 2 s
    for first in starts:  # no one-second window holds more than rate + 1 starts
        assert sum(1 for s in starts if first <= s < first + 1.0) <= 6


def test_retries_rerun_failed_attempts(make_runner: Factory, tmp_path: Path) -> None:
    counter = tmp_path / "count"
    cmd = f"!echo x >> {counter}; test $(wc -l < {counter}) -ge 3"
    data = {"steps": [{"name": "flaky", "command": cmd, "retries": 3, "retry_delay": 0.05}]}
    result = run_workflow(data, make_runner(), tmp_path)
    assert result.success
    assert result.steps["flaky"].attempts == 3
    assert len(counter.read_text().splitlines()) == 3


def test_retries_exhausted_fail(make_runner: Factory, tmp_path: Path) -> None:
    counter = tmp_path / "count"
    data = {
        "steps": [
            {"name": "bad", "command": f"!echo x >> {counter}; exit 4", "retries": 1, "retry_delay": 0.05}
        ]
    }
    result = run_workflow(data, make_runner(), tmp_path)
    assert result.steps["bad"].status is StepStatus.FAILED
    assert result.steps["bad"].attempts == 2
    assert len(counter.read_text().splitlines()) == 2
