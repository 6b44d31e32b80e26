"""Whole-workflow checks that the schema alone cannot express.

Names must be unique across the whole file (``results['x']`` and
``depends_on`` refer to them), every dependency must exist, the graph must be
acyclic, and devctl commands should name installed plugins.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from devctl_dist.core.exceptions import DuplicateStepError, MissingDependencyError
from devctl_dist.runners.commands import available_commands, split_command
from devctl_dist.workflows.graph import DependencyGraph
from devctl_dist.workflows.schema import WorkflowSchema, WorkflowStepSchema


def normalize(workflow: WorkflowSchema) -> WorkflowSchema:
    """The workflow, or a copy in which every parallel block has a unique name (``parallel-1``, ...)."""
    if not any(
        s.parallel is not None and not s.name and not s.parallel.name
        for s in iter_steps(workflow, hooks=True)
    ):
        return workflow
    copy = workflow.model_copy(deep=True)
    counter = 0
    for step in iter_steps(copy, hooks=True):
        if step.parallel is not None and not step.name and not step.parallel.name:
            counter += 1
            step.name = f"parallel-{counter}"
    return copy


def iter_steps(
    workflow: WorkflowSchema, *, hooks: bool = False, hooks_only: bool = False
) -> Iterator[WorkflowStepSchema]:
    """Every step and block wrapper, depth first, in declaration order."""
    lists: list[Sequence[WorkflowStepSchema]] = [] if hooks_only else [workflow.steps]
    if hooks or hooks_only:
        lists += [workflow.on_success, workflow.on_failure]
    for steps in lists:
        yield from _walk(steps)


def _walk(steps: Sequence[WorkflowStepSchema]) -> Iterator[WorkflowStepSchema]:
    for step in steps:
        yield step
        if step.parallel is not None:
            yield from _walk(step.parallel.steps)


@dataclass(frozen=True)
class CheckedWorkflow:
    """A workflow validated once: the normalized model, its top-level graph and the warnings."""

    workflow: WorkflowSchema
    graph: DependencyGraph
    warnings: list[str]


def check(workflow: WorkflowSchema) -> CheckedWorkflow:
    """Normalize and validate ``workflow`` once; later calls (run, plan, graph) reuse the verdict.

    Raises the structural errors of ``validate_workflow``. The model is treated
    as immutable once checked, as every command does.
    """
    cached = workflow._checked
    if isinstance(cached, CheckedWorkflow):
        return cached
    normalized = normalize(workflow)
    graph, warnings = _validate(normalized)
    checked = CheckedWorkflow(normalized, graph, warnings)
    workflow._checked = normalized._checked = checked
    return checked


def validate_workflow(workflow: WorkflowSchema) -> list[str]:
    """Raise on structural errors; return warnings (unknown devctl commands)."""
    return _validate(workflow)[1]


def _validate(workflow: WorkflowSchema) -> tuple[DependencyGraph, list[str]]:
    seen: set[str] = set()
    for step in iter_steps(workflow, hooks=True):
        name = step.display_name
        if name in seen:
            raise DuplicateStepError(name)
        seen.add(name)
    enclosing = {
        inner.display_name: step.display_name
        for step in iter_steps(workflow, hooks=True)
        if step.parallel is not None
        for inner in step.parallel.steps
    }
    graph = _scoped_graph(workflow.steps, enclosing, None)
    for step in iter_steps(workflow, hooks=True):
        if step.parallel is not None:
            _scoped_graph(step.parallel.steps, enclosing, step.display_name)
    for hooks in (workflow.on_success, workflow.on_failure):
        _scoped_graph(hooks, enclosing, "hooks")
    return graph, _command_warnings(workflow)


def _scoped_graph(
    steps: Sequence[WorkflowStepSchema], enclosing: dict[str, str], scope: str | None
) -> DependencyGraph:
    """A validated graph of one scope; a dependency on a step of another scope says where it is."""
    try:
        graph = DependencyGraph(steps)
        graph.validate()
    except MissingDependencyError as error:
        owner = enclosing.get(error.missing)
        if owner is None and scope is None:
            raise
        where = f"it is a step of block '{owner}'" if owner else "it is not a step of this block"
        rule = "steps depend only on steps of the same block or list; depend on the block instead"
        raise MissingDependencyError(error.step, error.missing, f"{where}; {rule}") from None
    return graph


def _command_warnings(workflow: WorkflowSchema) -> list[str]:
    installed = None  # the entry-point scan (~4 ms) only for a file that names a devctl command
    warnings = []
    for step in iter_steps(workflow, hooks=True):
        command = step.command
        if command is None or command.startswith("!") or "{" in command:
            continue
        installed = available_commands() if installed is None else installed
        plugin, _ = split_command(command)
        if plugin not in installed:
            warnings.append(
                f"step '{step.display_name}': unknown devctl command '{command}' "
                "(no plugin in entry-point group devctl.commands; use '!' for a shell command)"
            )
    return warnings
