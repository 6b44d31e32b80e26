"""The Jinja2 half of ``lint.py``: parse each template with the run's sandbox and check its names.

Imported only for a file that has something Jinja could read (``lint._templated``),
so validating a file without templates does not import Jinja2.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from jinja2 import meta, nodes
from jinja2.exceptions import TemplateSyntaxError
from jinja2.parser import Parser
from jinja2.sandbox import SandboxedEnvironment as Sandbox

from devctl_dist.workflows.lint import CONDITION_WORDS, WORKFLOW_ENV, Problem, Scope
from devctl_dist.workflows.schema import WorkflowStepSchema
from devctl_dist.workflows.templating import TemplateRenderer

_GUARD_FILTERS = frozenset({"default", "d"})
_GUARD_TESTS = frozenset({"defined", "undefined"})
_MAPPING_METHODS = frozenset({"get", "keys", "items", "values"})


def run_sandbox() -> Sandbox:
    """The sandbox a run renders with (its filters included, e.g. ``quote``), so both agree."""
    sandbox: Sandbox = TemplateRenderer({}, {})._sandbox
    return sandbox


def check_step(sandbox: Sandbox, step: WorkflowStepSchema, scope: Scope) -> list[Problem]:
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
        problems += check_template(sandbox, template, name, scope)
    return problems


def _check_condition(sandbox: Sandbox, condition: str, step: str, scope: Scope) -> list[Problem]:
    """Like ``TemplateRenderer.judge``: a template, a true/false word, or a bare expression."""
    if "{{" in condition or "{%" in condition:
        return check_template(sandbox, condition, step, scope)
    if condition.strip().lower() in CONDITION_WORDS:
        return []
    try:
        sandbox.compile_expression(condition.strip())  # what judge() does: also unknown filters
        expression = Parser(sandbox, condition.strip(), state="variable").parse_expression()
    except TemplateSyntaxError as error:
        return [Problem(step, f"template syntax error: {_one_line(error.message or '')}")]
    tree = nodes.Template([nodes.Output([expression])])
    tree.set_environment(sandbox)
    return _check_tree(tree, step, scope)


def check_template(sandbox: Sandbox, template: str, step: str, scope: Scope) -> list[Problem]:
    if "{" not in template:
        return []
    try:
        sandbox.compile(template)  # what render() does: also unknown filters and tests
        tree = sandbox.parse(template)
    except TemplateSyntaxError as error:
        return [Problem(step, f"template syntax error: {_one_line(error.message or '')}")]
    return _check_tree(tree, step, scope)


def _check_tree(tree: nodes.Template, step: str, scope: Scope) -> list[Problem]:
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


def _check_result(target: str, step: str, scope: Scope) -> Problem | None:
    if target not in scope.steps:
        return Problem(step, f"results['{target}'] names no step")
    if step == WORKFLOW_ENV:
        return Problem(step, f"results['{target}'] is not available (no step has run yet)")
    if scope.readable is not None and target not in scope.readable:
        why = f"not a dependency of '{step}'" if scope.graph else f"'{target}' does not run before '{step}'"
        return Problem(step, f"results['{target}'] is not available ({why})")
    return None


def _one_line(text: str) -> str:
    return " ".join(text.split())
