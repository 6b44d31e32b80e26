"""The original devctl's Python API, which users import, keeps working."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from devctl_dist.core.exceptions import DependencyCycleError, MissingDependencyError
from devctl_dist.workflows.graph import DependencyGraph
from devctl_dist.workflows.results import ParallelBlockResult, StepResult, StepStatus
from devctl_dist.workflows.schema import WorkflowStepSchema


def test_block_result_counts_derive_from_its_steps() -> None:
    steps = [
        StepResult(name="a", success=True),
        StepResult(name="b", success=False, error="boom"),
        StepResult(name="c", success=False, skipped=True),
    ]
    block = ParallelBlockResult(name="deploy", success=False, steps=steps)
    assert (block.succeeded_count, block.failed_count, block.skipped_count) == (1, 1, 1)
    assert not block.all_succeeded and block.any_succeeded
    assert ParallelBlockResult(name=None, success=True, steps=steps[:1]).all_succeeded


def test_block_result_counts_states_set_by_the_scheduler() -> None:
    steps = [
        StepResult(name="a", success=True, status=StepStatus.SUCCEEDED),
        StepResult(name="b", success=False, status=StepStatus.TIMED_OUT),
        StepResult(name="c", success=False, status=StepStatus.CANCELLED),
        StepResult(name="d", success=False, status=StepStatus.FAILED_ALLOWED),
    ]
    block = ParallelBlockResult("x", False, steps)
    assert (block.succeeded_count, block.failed_count, block.skipped_count) == (1, 2, 0)
    assert block.to_dict()["failed_count"] == 2


def test_unknown_dependency_is_refused_when_the_graph_is_built() -> None:
    steps = [WorkflowStepSchema(name="a", command="!true", depends_on=["nope"])]
    with pytest.raises(MissingDependencyError, match="unknown step"):
        DependencyGraph(steps)


def test_cycle_message_names_the_path() -> None:
    steps = [
        WorkflowStepSchema(name="a", command="!true", depends_on=["b"]),
        WorkflowStepSchema(name="b", command="!true", depends_on=["a"]),
    ]
    with pytest.raises(DependencyCycleError) as caught:
        DependencyGraph(steps).validate()
    assert str(caught.value) == "circular dependency: a -> b -> a"
    assert caught.value.cycle == ["a", "b", "a"]


def test_has_dependencies_without_argument() -> None:
    flat = [WorkflowStepSchema(name="a", command="!true"), WorkflowStepSchema(name="b", command="!true")]
    assert not DependencyGraph(flat).has_dependencies()
    flat.append(WorkflowStepSchema(name="c", command="!true", depends_on=["a"]))
    assert DependencyGraph(flat).has_dependencies()


def test_step_needs_command_or_parallel_but_not_both() -> None:
    with pytest.raises(ValidationError, match="must have either"):
        WorkflowStepSchema(name="empty")
    with pytest.raises(ValidationError, match="cannot have both"):
        WorkflowStepSchema.model_validate(
            {"name": "both", "command": "!true", "parallel": {"steps": [{"name": "x", "command": "!true"}]}}
        )
