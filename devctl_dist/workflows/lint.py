"""Static checks of a workflow's templates, for ``devctl validate`` as a CI gate.

A run fails a step on an undefined template variable, a template syntax error,
or a ``results['x']`` that names no step or (in graph mode) a step that is not an
ancestor. Those are all visible in the file, so validation finds them before
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
from typing import Any

from jinja2 import meta, nodes
from jinja2.exceptions import TemplateSyntaxError
from jinja2.parser import Parser
from jinja2.sandbox import SandboxedEnvironment as Sandbox

from devctl_dist.workflows.schema import WorkflowSchema, WorkflowStepSchema
from devctl_dist.workflows.templating import TemplateRenderer
from devctl_dist.workflows.validation import iter_steps, normalize

_RUN_GLOBALS = frozenset({"vars", "env", "results"})
_GUARD_FILTERS = frozenset({"default", "d"})
_GUARD_TESTS = frozenset({"defined", "undefined"})
_MAPPING_METHODS = frozenset({"get", "keys", "items", "values"})
_CONDITION_WORDS = frozenset({"true", "yes", "on", "1", "false", "no", "off", "0", "none", ""})
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
class _Scope:
    """What a template of one step may name: variables, all step names, readable results."""

    variables: frozenset[str]
    steps: frozenset[str]
    readable: frozenset[str] | None  # None: any step (sequences); else ancestors (graph mode)


def lint_workflow(workflow: WorkflowSchema, variables: Collection[str] = ()) -> list[Problem]:
    """Every template problem in ``workflow``, in file order; ``variables`` are the ``--var`` names."""
    workflow = normalize(workflow)
    sandbox = _run_sandbox()
    known = frozenset(workflow.vars) | frozenset(variables) | _RUN_GLOBALS | frozenset(sandbox.globals)
    names = frozenset(step.display_name for step in iter_steps(workflow, hooks=True))
    problems: list[Problem] = []
    env_scope = _Scope(known, names, frozenset())
    for value in workflow.env.values():
        problems += _check_template(sandbox, value, WORKFLOW_ENV, env_scope)
    for step, readable in _step_scopes(workflow):
        scope = _Scope(known, names, readable)
        problems += _check_step(sandbox, step, scope)
    return problems


def _run_sandbox() -> Sandbox:
    """The sandbox a run renders with (its filters included, e.g. ``quote``), so both agree."""
    sandbox: Sandbox = TemplateRenderer({}, {})._sandbox
    return sandbox


def _step_scopes(workflow: WorkflowSchema) -> Iterator[tuple[WorkflowStepSchema, frozenset[str] | None]]:
    """Each step with the results it may read, as the scheduler decides them (parallel.Ancestry)."""
    yield from _scoped(workflow.steps, frozenset() if workflow.is_dag else None)
    for hooks in (workflow.on_success, workflow.on_failure):
        yield from _scoped(hooks, None)


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


def _check_step(sandbox: Sandbox, step: WorkflowStepSchema, scope: _Scope) -> list[Problem]:
    """The templates the run renders for ``step``: condition, command, params and env values."""
    name = step.display_name
    problems: list[Problem] = []
    if step.condition is not None:
        problems += _check_condition(sandbox, step.condition, name, scope)
    command = step.command or ""
    templates = [command[1:] if command.startswith("!") else command]
    templates += [value for value in step.params.values() if isinstance(value, str)]
    templates += list(step.env.values())
    for template in templates:
        problems += _check_template(sandbox, template, name, scope)
    return problems


def _check_condition(sandbox: Sandbox, condition: str, step: str, scope: _Scope) -> list[Problem]:
    """Like ``TemplateRenderer.judge``: a template, a true/false word, or a bare expression."""
    if "{{" in condition or "{%" in condition:
        return _check_template(sandbox, condition, step, scope)
    if condition.strip().lower() in _CONDITION_WORDS:
        return []
    try:
        sandbox.compile_expression(condition.strip())  # what judge() does: also unknown filters
        expression = Parser(sandbox, condition.strip(), state="variable").parse_expression()
    except TemplateSyntaxError as error:
        return [Problem(step, f"template syntax error: {_one_line(error.message or '')}")]
    tree = nodes.Template([nodes.Output([expression])])
    tree.set_environment(sandbox)
    return _check_tree(tree, step, scope)


def _check_template(sandbox: Sandbox, template: str, step: str, scope: _Scope) -> list[Problem]:
    if "{" not in template:
        return []
    try:
        sandbox.compile(template)  # what render() does: also unknown filters and tests
        tree = sandbox.parse(template)
    except TemplateSyntaxError as error:
        return [Problem(step, f"template syntax error: {_one_line(error.message or '')}")]
    return _check_tree(tree, step, scope)


def _check_tree(tree: nodes.Template, step: str, scope: _Scope) -> list[Problem]:
    problems = []
    guarded = _guarded_names(tree)
    for name in sorted(meta.find_undeclared_variables(tree) - scope.variables - guarded):
        problems.append(Problem(step, f"undefined variable '{name}'"))
    for target in _result_references(tree):
        problem = _check_result(target, step, scope)
        if problem is not None:
            problems.append(problem)
    return problems


def _guarded_names(tree: nodes.Node) -> set[str]:
    """Names that are only looked at through ``| default`` or ``is defined``: undefined is fine there."""
    names: set[str] = set()
    for node in tree.find_all((nodes.Filter, nodes.Test)):
        guards = _GUARD_FILTERS if isinstance(node, nodes.Filter) else _GUARD_TESTS
        if node.name in guards and isinstance(node.node, nodes.Name):
            names.add(node.node.name)
    return names


def _result_references(tree: nodes.Node) -> Iterator[str]:
    """Step names used as ``results['x']``, ``results.x`` or ``results.get('x')`` with a literal name."""
    for node in tree.find_all((nodes.Getitem, nodes.Getattr, nodes.Call)):
        target = _reference(node)
        if target is not None:
            yield target


def _reference(node: nodes.Node) -> str | None:
    if isinstance(node, nodes.Getitem) and _is_results(node.node) and isinstance(node.arg, nodes.Const):
        value: Any = node.arg.value
        return value if isinstance(value, str) else None
    if isinstance(node, nodes.Getattr) and _is_results(node.node) and node.attr not in _MAPPING_METHODS:
        return str(node.attr)
    if isinstance(node, nodes.Call) and isinstance(node.node, nodes.Getattr) and node.args:
        method, first = node.node, node.args[0]
        if method.attr == "get" and _is_results(method.node) and isinstance(first, nodes.Const):
            return first.value if isinstance(first.value, str) else None
    return None


def _is_results(node: nodes.Node) -> bool:
    return isinstance(node, nodes.Name) and node.name == "results"


def _check_result(target: str, step: str, scope: _Scope) -> Problem | None:
    if target not in scope.steps:
        return Problem(step, f"results['{target}'] names no step")
    if step == WORKFLOW_ENV:
        return Problem(step, f"results['{target}'] is not available (no step has run yet)")
    if scope.readable is not None and target not in scope.readable:
        return Problem(step, f"results['{target}'] is not available (not a dependency of '{step}')")
    return None


def _one_line(text: str) -> str:
    return " ".join(text.split())
