"""DAG rows of the semantics table: dependencies, skips, fail_fast on and off, outputs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from devctl_dist.runners.base import StepRunner
from devctl_dist.workflows.results import StepStatus
from tests.workflows.semantics import read_pid, run_workflow, spans, step, wait_gone

Factory = Callable[[], StepRunner]


def test_dependents_start_after_their_dependencies(make_runner: Factory, tmp_path: Path) -> None:
    log = tmp_path / "log"
    data = {
        "steps": [
            {"name": "checkout", "command": step(log, "checkout", sleep=0.3)},
            {"name": "backend", "command": step(log, "backend", sleep=0.5), "depends_on": ["checkout"]},
            {"name": "frontend", "command": step(log, "frontend", sleep=0.5), "depends_on": ["checkout"]},
            {"name": "deploy", "command": step(log, "deploy"), "depends_on": ["backend", "frontend"]},
        ]
    }
    result = run_workflow(data, make_runner(), tmp_path)
    assert result.success and result.mode == "dag"
    s = spans(log)
    assert s["backend"].start >= (s["checkout"].end or 0)
    assert s["frontend"].start >= (s["checkout"].end or 0)
    assert s["deploy"].start >= max(s["backend"].end or 0, s["frontend"].end or 0)
    assert s["backend"].start < (s["frontend"].end or 0) and s["frontend"].start < (s["backend"].end or 0)


def test_dependent_of_failed_step_is_skipped_with_reason(make_runner: Factory, tmp_path: Path) -> None:
    log = tmp_path / "log"
    data = {
        "parallel": {"fail_fast": False},
        "steps": [
            {"name": "a", "command": step(log, "a", exit_code=1)},
            {"name": "b", "command": step(log, "b"), "depends_on": ["a"]},
            {"name": "c", "command": step(log, "c"), "depends_on": ["b"]},
            {"name": "independent", "command": step(log, "independent", sleep=0.5)},
        ],
    }
    result = run_workflow(data, make_runner(), tmp_path)
    assert not result.success
    assert result.steps["b"].status is StepStatus.SKIPPED
    assert result.steps["b"].skip_reason == "dependency 'a' failed"
    assert result.steps["c"].skip_reason == "dependency 'b' was skipped"
    assert result.steps["independent"].status is StepStatus.SUCCEEDED  # fail_fast false: branches go on
    assert set(spans(log)) == {"a", "independent"}


def test_fail_fast_cancels_running_branches(make_runner: Factory, tmp_path: Path) -> None:
    log = tmp_path / "log"
    data = {
        "steps": [
            {"name": "slow", "command": step(log, "slow", sleep=60, pidfile=True)},
            {"name": "bad", "command": step(log, "bad", sleep=0.5, exit_code=1)},
            {"name": "after-slow", "command": step(log, "after-slow"), "depends_on": ["slow"]},
        ]
    }
    result = run_workflow(data, make_runner(), tmp_path)
    assert not result.success
    assert result.steps["slow"].status is StepStatus.CANCELLED
    assert result.steps["after-slow"].status is StepStatus.SKIPPED
    assert wait_gone([read_pid(tmp_path / "slow.pid")]) == []
    assert result.duration < 30


def test_results_flow_to_dependents(make_runner: Factory, tmp_path: Path) -> None:
    out = tmp_path / "out"
    data = {
        "steps": [
            {"name": "version", "command": "!echo 1.2.3"},
            {
                "name": "tag",
                "command": "!echo v{{ results['version'].stdout }}-{{ results['version'].exit_code }} > "
                + str(out),
                "depends_on": ["version"],
            },
        ]
    }
    runner = make_runner()
    result = run_workflow(data, runner, tmp_path)
    assert result.success
    assert out.read_text() == "v1.2.3-0\n"
    # the distributed runner records which worker ran each step
    assert (result.steps["version"].worker is not None) is (runner.name == "distributed")


def test_results_of_non_dependency_are_a_step_error(make_runner: Factory, tmp_path: Path) -> None:
    data = {
        "steps": [
            {"name": "a", "command": "!echo a"},
            {"name": "b", "command": "!echo {{ results['a'].stdout }}"},
            {"name": "c", "command": "!true", "depends_on": ["a"]},
        ]
    }
    result = run_workflow(data, make_runner(), tmp_path)
    assert result.steps["b"].status is StepStatus.FAILED
    assert "results['a']" in (result.steps["b"].error or "")


def test_condition_false_skips_step_and_its_dependents(make_runner: Factory, tmp_path: Path) -> None:
    log = tmp_path / "log"
    data = {
        "vars": {"env": "dev"},
        "steps": [
            {"name": "prod-only", "command": step(log, "prod-only"), "condition": "env == 'prod'"},
            {"name": "after", "command": step(log, "after"), "depends_on": ["prod-only"]},
            {"name": "always", "command": step(log, "always")},
        ],
    }
    result = run_workflow(data, make_runner(), tmp_path)
    assert result.success
    assert result.steps["prod-only"].status is StepStatus.SKIPPED
    assert result.steps["after"].status is StepStatus.SKIPPED
    assert set(spans(log)) == {"always"}


def test_fail_fast_cancels_steps_inside_a_running_block_node(make_runner: Factory, tmp_path: Path) -> None:
    log = tmp_path / "log"
    inner = [{"name": f"in{i}", "command": step(log, f"in{i}", sleep=60, pidfile=True)} for i in range(2)]
    data = {
        "steps": [
            {"name": "root", "command": step(log, "root")},
            {"name": "blk", "parallel": {"name": "blk", "steps": inner}, "depends_on": ["root"]},
            {"name": "bad", "command": step(log, "bad", sleep=1, exit_code=1), "depends_on": ["root"]},
        ]
    }
    result = run_workflow(data, make_runner(), tmp_path)
    assert not result.success
    assert {result.steps["in0"].status, result.steps["in1"].status} == {StepStatus.CANCELLED}
    assert [b.status for b in result.blocks if b.name == "blk"] == [StepStatus.CANCELLED]
    assert wait_gone([read_pid(tmp_path / f"in{i}.pid") for i in (0, 1)]) == []
    assert result.duration < 30


def test_a_dependency_across_scopes_says_where_the_step_is() -> None:
    """Inside a block, steps depend on siblings only: naming a top-level step says so, not 'unknown'."""
    import pytest

    from devctl_dist.core.exceptions import MissingDependencyError
    from devctl_dist.workflows.loader import load_workflow_text
    from devctl_dist.workflows.validation import check

    text = """
steps:
  - {name: a, command: "!true"}
  - name: blk
    parallel:
      steps:
        - {name: x, command: "!true", depends_on: [a]}
"""
    with pytest.raises(MissingDependencyError, match=r"not a step of this block; .*depend on the block"):
        check(load_workflow_text(text, "w.yaml"))
    later = '  - {name: c, command: "!true", depends_on: [x]}\n'
    outer = text.replace("depends_on: [a]", "depends_on: []") + later
    with pytest.raises(MissingDependencyError, match="it is a step of block 'blk'"):
        check(load_workflow_text(outer, "w.yaml"))
