"""The pydantic schema: the seed's defaults, strict keys, and the old sequential format."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from devctl_dist.workflows.schema import (
    ParallelBlockSchema,
    ParallelConfigSchema,
    WorkflowSchema,
    WorkflowStepSchema,
)

STEP: dict[str, Any] = {"name": "a", "command": "!true"}


def errors_of(model: type[Any], data: dict[str, Any]) -> list[tuple[tuple[Any, ...], str]]:
    with pytest.raises(ValidationError) as caught:
        model.model_validate(data)
    return [(tuple(e["loc"]), e["type"]) for e in caught.value.errors()]


def test_parallel_config_defaults_match_the_seed() -> None:
    config = ParallelConfigSchema()
    assert (config.max_concurrent, config.rate_limit, config.fail_fast) == (10, None, True)


def test_parallel_block_defaults_match_the_seed() -> None:
    block = ParallelBlockSchema(steps=[WorkflowStepSchema.model_validate(STEP)])
    assert (block.name, block.on_failure, block.timeout, block.max_concurrent) == (
        None,
        "fail_all",
        None,
        None,
    )


def test_step_defaults() -> None:
    step = WorkflowStepSchema.model_validate(STEP)
    assert step.parallel is None and step.depends_on == []
    assert (step.params, step.condition, step.timeout, step.retries, step.on_failure) == (
        {},
        None,
        None,
        0,
        "fail",
    )
    assert (step.description, step.env, step.queue, step.retry_delay) == (None, {}, None, 1.0)
    assert step.display_name == "a" and not step.is_block


def test_workflow_defaults() -> None:
    workflow = WorkflowSchema.model_validate({"steps": [STEP]})
    assert workflow.name == "workflow"
    assert workflow.parallel == ParallelConfigSchema()
    assert (workflow.vars, workflow.env, workflow.on_success, workflow.on_failure) == ({}, {}, [], [])
    assert workflow.is_sequential and not workflow.is_dag


@pytest.mark.parametrize(
    ("model", "data", "loc"),
    [
        (WorkflowSchema, {"steps": [STEP], "stepz": []}, ("stepz",)),
        (WorkflowSchema, {"steps": [{**STEP, "comand": "x"}]}, ("steps", 0, "comand")),
        (WorkflowSchema, {"steps": [STEP], "parallel": {"max_concurent": 2}}, ("parallel", "max_concurent")),
        (ParallelBlockSchema, {"steps": [STEP], "fail_fast": True}, ("fail_fast",)),
    ],
)
def test_unknown_keys_are_rejected(model: type[Any], data: dict[str, Any], loc: tuple[Any, ...]) -> None:
    assert errors_of(model, data) == [(loc, "extra_forbidden")]


@pytest.mark.parametrize(
    ("data", "loc", "kind"),
    [
        ({"max_concurrent": 0}, ("max_concurrent",), "greater_than_equal"),
        ({"max_concurrent": "many"}, ("max_concurrent",), "int_parsing"),
        ({"rate_limit": 0}, ("rate_limit",), "greater_than"),
        ({"rate_limit": -1.5}, ("rate_limit",), "greater_than"),
        ({"fail_fast": "maybe"}, ("fail_fast",), "bool_parsing"),
        ({"max_concurrent": True}, ("max_concurrent",), "value_error"),
        ({"rate_limit": True}, ("rate_limit",), "value_error"),
    ],
)
def test_bad_parallel_config_values(data: dict[str, Any], loc: tuple[Any, ...], kind: str) -> None:
    assert errors_of(ParallelConfigSchema, data) == [(loc, kind)]


@pytest.mark.parametrize(
    ("data", "loc", "kind"),
    [
        ({"on_failure": "explode"}, ("on_failure",), "literal_error"),
        ({"on_failure": "fail_all"}, ("on_failure",), "literal_error"),
        ({"timeout": 0}, ("timeout",), "greater_than"),
        ({"retries": -1}, ("retries",), "greater_than_equal"),
        ({"retry_delay": -1}, ("retry_delay",), "greater_than_equal"),
        ({"depends_on": [1]}, ("depends_on", 0), "string_type"),
        ({"params": "x=1"}, ("params",), "dict_type"),
        ({"retries": True}, ("retries",), "value_error"),
        ({"timeout": True}, ("timeout",), "value_error"),
        ({"retry_delay": False}, ("retry_delay",), "value_error"),
    ],
)
def test_bad_step_values(data: dict[str, Any], loc: tuple[Any, ...], kind: str) -> None:
    assert errors_of(WorkflowStepSchema, {**STEP, **data}) == [(loc, kind)]


@pytest.mark.parametrize(
    ("data", "loc", "kind"),
    [
        ({"on_failure": "fail"}, ("on_failure",), "literal_error"),
        ({"timeout": -5}, ("timeout",), "greater_than"),
        ({"max_concurrent": 0}, ("max_concurrent",), "greater_than_equal"),
        ({"max_concurrent": True}, ("max_concurrent",), "value_error"),
        ({"steps": []}, ("steps",), "too_short"),
    ],
)
def test_bad_block_values(data: dict[str, Any], loc: tuple[Any, ...], kind: str) -> None:
    assert errors_of(ParallelBlockSchema, {"steps": [STEP], **data}) == [(loc, kind)]


def test_numbers_written_as_text_still_count() -> None:
    """Old workflows quote numbers (``timeout: "30"``); only booleans are refused as numbers."""
    step = WorkflowStepSchema.model_validate({**STEP, "retries": "2", "timeout": "1.5", "retry_delay": 0})
    assert (step.retries, step.timeout, step.retry_delay) == (2, 1.5, 0.0)


def test_workflow_needs_steps() -> None:
    assert errors_of(WorkflowSchema, {"name": "x"}) == [(("steps",), "missing")]
    assert errors_of(WorkflowSchema, {"steps": []}) == [(("steps",), "too_short")]


@pytest.mark.parametrize(
    "data",
    [
        {"name": "neither"},
        {"name": "both", "command": "!true", "parallel": {"steps": [STEP]}},
        {"command": "!true"},
        {"name": "blank", "command": "   "},
    ],
    ids=["neither", "both", "unnamed command", "blank command"],
)
def test_command_xor_parallel(data: dict[str, Any]) -> None:
    assert errors_of(WorkflowStepSchema, data) == [((), "value_error")]


def test_block_step_takes_its_block_name() -> None:
    step = WorkflowStepSchema.model_validate({"parallel": {"name": "Deploy", "steps": [STEP]}})
    assert step.is_block and step.display_name == "Deploy" and step.command is None
    anonymous = WorkflowStepSchema.model_validate({"parallel": {"steps": [STEP]}})
    assert anonymous.display_name == "parallel block"
    named = WorkflowStepSchema.model_validate(
        {"name": "outer", "parallel": {"name": "inner", "steps": [STEP]}}
    )
    assert named.display_name == "outer"


def test_all_block_failure_modes_accepted() -> None:
    for mode in ("fail_all", "continue", "complete_running"):
        assert ParallelBlockSchema.model_validate({"steps": [STEP], "on_failure": mode}).on_failure == mode


def test_old_sequential_workflow_is_accepted() -> None:
    workflow = WorkflowSchema.model_validate(
        {
            "name": "nightly",
            "description": "cleanup",
            "version": 2,
            "vars": {"days": 7, "targets": ["a", "b"]},
            "env": {"PORT": 8080, "DEBUG": False, "EMPTY": None, "NAME": "x"},
            "steps": [
                {
                    "name": "prune",
                    "command": "!prune --days {{ days }}",
                    "condition": "{{ days > 0 }}",
                    "timeout": 60,
                    "retries": 2,
                    "on_failure": "continue",
                },
                {
                    "name": "report",
                    "command": "report send",
                    "params": {"to": "ops", "n": 3},
                    "on_failure": "skip",
                },
                {"name": "final", "command": "!true", "on_failure": "fail"},
            ],
            "on_success": [{"name": "notify", "command": "!echo ok"}],
            "on_failure": [{"name": "page", "command": "!echo bad"}],
        }
    )
    assert workflow.version == "2"
    assert workflow.env == {"PORT": "8080", "DEBUG": "false", "EMPTY": "", "NAME": "x"}
    assert [s.on_failure for s in workflow.steps] == ["continue", "skip", "fail"]
    assert workflow.steps[1].params == {"to": "ops", "n": 3}
    assert workflow.is_sequential and not workflow.is_dag


def test_depends_on_accepts_a_single_name_and_switches_to_dag_mode() -> None:
    workflow = WorkflowSchema.model_validate(
        {"steps": [STEP, {"name": "b", "command": "!true", "depends_on": "a"}]}
    )
    assert workflow.steps[1].depends_on == ["a"]
    assert workflow.is_dag and not workflow.is_sequential


def test_parallel_block_is_not_sequential() -> None:
    workflow = WorkflowSchema.model_validate({"steps": [STEP, {"parallel": {"steps": [STEP]}}]})
    assert not workflow.is_sequential and not workflow.is_dag


def test_global_parallel_config_is_parsed() -> None:
    workflow = WorkflowSchema.model_validate(
        {"parallel": {"max_concurrent": 4, "rate_limit": 5.0, "fail_fast": False}, "steps": [STEP]}
    )
    assert (workflow.parallel.max_concurrent, workflow.parallel.rate_limit, workflow.parallel.fail_fast) == (
        4,
        5.0,
        False,
    )
