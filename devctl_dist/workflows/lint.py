"""Static checks of a workflow's templates, for ``devctl validate`` as a CI gate.

A run fails a step on an undefined template variable, a template syntax error,
or a ``results['x']`` that names no step or a step that has not surely finished
(in graph mode, one that is not an ancestor; in a sequence, one that does not run
before). Those are all visible in the file, so validation finds them before
anything runs: each template is parsed with the same Jinja2 sandbox the run uses
and its names are checked against what the run will provide.

Known names: the workflow's ``vars``, the ``--var`` names, ``vars``, ``env`` and
``results``, and Jinja's globals (``range``, ``dict``, ...). A name guarded by
``| default(...)`` or ``is defined`` is fine. ``env.X`` is not checked: the
environment of the run is not the environment of the check.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass

from devctl_dist.workflows.schema import WorkflowSchema, WorkflowStepSchema
from devctl_dist.workflows.validation import iter_steps, normalize

_RUN_GLOBALS = frozenset({"vars", "env", "results"})
CONDITION_WORDS = frozenset({"true", "yes", "on", "1", "false", "no", "off", "0", "none", ""})
WORKFLOW_ENV = ""  # Problem.step for the workflow-level env, rendered before any step runs


@dataclass(frozen=True)
class Problem:
    """One thing a run would fail on: which step (or ``env``) and why, in the run's own words."""

    step: str  # WORKFLOW_ENV for the workflow-level env
    message: str

    def __str__(self) -> str:
        where = "workflow env" if self.step == WORKFLOW_ENV else f"step '{self.step}'"
        return f"{where}: {self.message}"


@dataclass(frozen=True)
class Scope:
    """What a template of one step may name: variables, all step names, readable results."""

    variables: frozenset[str]
    steps: frozenset[str]
    readable: frozenset[str] | None  # None: any step (hooks); else what has surely finished
    graph: bool = True  # graph mode: readable = ancestors; a sequence: the steps before it


def lint_workflow(workflow: WorkflowSchema, variables: Collection[str] = ()) -> list[Problem]:
    """Every template problem in ``workflow``, in file order; ``variables`` are the ``--var`` names.

    A file with nothing Jinja could read (no ``{``, no condition but a true/false
    word) has no template problem: it is answered without importing Jinja2.
    """
    workflow = normalize(workflow)
    if not _templated(workflow):
        return []
    from devctl_dist.workflows.lint_templates import check_step, check_template, run_sandbox

    sandbox = run_sandbox()
    known = frozenset(workflow.vars) | frozenset(variables) | _RUN_GLOBALS | frozenset(sandbox.globals)
    names = frozenset(step.display_name for step in iter_steps(workflow, hooks=True))
    problems: list[Problem] = []
    env_scope = Scope(known, names, frozenset())
    for value in workflow.env.values():
        problems += check_template(sandbox, value, WORKFLOW_ENV, env_scope)
    for step, readable in _step_scopes(workflow):
        scope = Scope(known, names, readable, workflow.is_dag)
        problems += check_step(sandbox, step, scope)
    return problems


def _templated(workflow: WorkflowSchema) -> bool:
    """Whether any value the checks read could hold Jinja (``check_step`` reads the same ones)."""
    if any("{" in value for value in workflow.env.values()):
        return True
    for step in iter_steps(workflow, hooks=True):
        condition = step.condition
        if condition is not None and condition.strip().lower() not in CONDITION_WORDS:
            return True
        values = [step.command or "", *step.env.values(), *step.params.values()]
        if any(isinstance(value, str) and "{" in value for value in values):
            return True
    return False


def _step_scopes(workflow: WorkflowSchema) -> Iterator[tuple[WorkflowStepSchema, frozenset[str] | None]]:
    """Each step with the results it may read, as the scheduler decides them (parallel.Ancestry).

    In a sequence, a step reads the steps before it: a later step has no result
    yet when it starts, and a sibling in the same block runs alongside it.
    """
    if workflow.is_dag:
        yield from _scoped(workflow.steps, frozenset())
    else:
        yield from _in_order(workflow.steps)
    for hooks in (workflow.on_success, workflow.on_failure):
        yield from _scoped(hooks, None)


def _in_order(
    steps: Sequence[WorkflowStepSchema],
) -> Iterator[tuple[WorkflowStepSchema, frozenset[str] | None]]:
    finished: frozenset[str] = frozenset()
    for step in steps:
        yield step, finished
        if step.parallel is not None:
            yield from _scoped(step.parallel.steps, finished)
        finished = finished | _all_names(step)


def _all_names(step: WorkflowStepSchema) -> frozenset[str]:
    inner = step.parallel.steps if step.parallel is not None else []
    return frozenset({step.display_name}).union(*(_all_names(child) for child in inner))


def _scoped(
    steps: Sequence[WorkflowStepSchema], base: frozenset[str] | None
) -> Iterator[tuple[WorkflowStepSchema, frozenset[str] | None]]:
    deps = {step.display_name: step.depends_on for step in steps}
    for step in steps:
        readable = None if base is None else _ancestors(step.display_name, deps) | base
        yield step, readable
        if step.parallel is not None:
            yield from _scoped(step.parallel.steps, readable)


def _ancestors(name: str, deps: Mapping[str, Sequence[str]]) -> frozenset[str]:
    seen: set[str] = set()
    stack = list(deps.get(name, ()))
    while stack:
        node = stack.pop()
        if node not in seen:
            seen.add(node)
            stack.extend(deps.get(node, ()))
    return frozenset(seen)
