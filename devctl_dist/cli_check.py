"""The commands that read a workflow without running anything: ``validate`` and ``graph``.

Also the loading every command shares (``load_checked``: one way to report a bad
file) and ``LazyChoice``. A command that starts nothing runs inside
``starts_nothing``: it builds objects that all live until the process ends, so
collecting them, or freeing them one by one at exit, is pure cost.
"""

from __future__ import annotations

import gc
import importlib
import sys
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import click

from devctl_dist.cli_errors import CliState, one_line, report
from devctl_dist.cli_help import EPILOG_GRAPH, EPILOG_VALIDATE, HELP
from devctl_dist.cli_support import PipeSafeStream, expand_paths, parse_vars
from devctl_dist.core.exceptions import (
    EXIT_FAILED,
    EXIT_INVALID,
    EXIT_OK,
    DependencyCycleError,
    DevctlError,
    DuplicateStepError,
    GraphError,
    MissingDependencyError,
    WorkflowError,
    WorkflowValidationError,
)
from devctl_dist.core.gc_pause import gc_paused

if TYPE_CHECKING:
    from devctl_dist.workflows.schema import WorkflowSchema

__all__ = [
    "LazyChoice",
    "graph_command",
    "invalid_input",
    "load_checked",
    "starts_nothing",
    "validate_command",
]


@contextmanager
def starts_nothing(state: CliState) -> Iterator[None]:
    """A command that only reads and prints: no cyclic GC while it runs, and a quick exit after.

    In devctl's own process (``state.process_ends``) the GC stays off until
    ``main`` ends it with ``exit_now``: turning it back on would collect every
    object start-up made (15 ms after ``validate`` imported pydantic and Jinja2).
    In-process callers (tests) get the GC back as they had it.
    """
    state.quick_exit = True
    if state.process_ends:
        gc.disable()
        yield
        return
    with gc_paused():
        yield


@contextmanager
def invalid_input() -> Iterator[None]:
    """Errors while loading or checking a workflow mean invalid input: exit 2, whatever raised."""
    try:
        yield
    except DevctlError as exc:
        if exc.exit_code != EXIT_FAILED:
            raise
        raise WorkflowError(str(exc)) from exc


def load_checked(path: str) -> tuple[WorkflowSchema, list[str]]:
    """Load and validate a workflow file; returns it with its warnings. Raises exit-2 errors.

    Every command that reads a workflow goes through here, so each reports a bad
    file the same way: ``FILE:LINE: message``.
    """
    from devctl_dist.workflows.loader import load_workflow  # pydantic: only once a file is read
    from devctl_dist.workflows.validation import check

    with invalid_input():
        workflow = load_workflow(path)
        try:
            warnings = check(workflow).warnings
        except GraphError as error:
            raise WorkflowValidationError(str(error), path, _graph_error_line(path, error)) from None
    return workflow, warnings


def _graph_error_line(path: str, error: GraphError) -> int | None:
    """Point at the step the graph error is about: the file and line make it actionable."""
    from devctl_dist.workflows.loader import locate_step

    if isinstance(error, MissingDependencyError):
        return locate_step(path, error.step)
    if isinstance(error, DuplicateStepError):
        return locate_step(path, error.name, occurrence=-1)
    if isinstance(error, DependencyCycleError):
        return locate_step(path, error.cycle[0])
    return None


class LazyChoice(click.Choice[str]):
    """A ``click.Choice`` whose choices are ``module.attribute``, imported when first read.

    The choices of ``--output`` live with the listeners (Rich), those of ``graph
    --format`` with the formatter (pydantic): `devctl validate` and `--version`
    import neither.
    """

    def __init__(self, module: str, attribute: str) -> None:  # no super(): it would read them now
        self._where = (module, attribute)
        self._choices: tuple[str, ...] | None = None
        self.case_sensitive = True

    @property
    def choices(self) -> tuple[str, ...]:
        if self._choices is None:
            module, attribute = self._where
            self._choices = tuple(getattr(importlib.import_module(module), attribute))
        return self._choices

    @choices.setter
    def choices(self, value: tuple[str, ...]) -> None:
        self._choices = tuple(value)


# ---------------------------------------------------------------- validate, graph


@click.command("validate", epilog=EPILOG_VALIDATE)
@click.argument("files", nargs=-1, required=True, metavar="FILE...")
@click.option("--var", "-v", "variables", multiple=True, metavar="KEY=VALUE", help=HELP["validate-var"])
@click.pass_obj
def validate_command(state: CliState, files: tuple[str, ...], variables: tuple[str, ...]) -> None:
    """Check workflow files: schema, names, dependencies, cycles, templates, commands.

    One line per file (OK or the error); exit 2 if any file is invalid.
    """
    names = parse_vars(variables)
    code = EXIT_OK
    out: Any = PipeSafeStream(sys.stdout)  # `| head -1` must not change the verdict on the other files
    with starts_nothing(state):
        for path, matched in expand_paths(files):
            try:
                if not matched:
                    raise WorkflowError(f"{path}: no file matches")
                lines = validate_file(path, names)
            except DevctlError as exc:  # report it and go on: CI wants every bad file at once
                report(exc, state, f"devctl: error: {one_line(str(exc))}")
                code = EXIT_INVALID
                continue
            for line in lines:
                click.echo(line, file=out)
    click.get_current_context().exit(code)


def validate_file(path: str, variables: Collection[str]) -> list[str]:
    """The OK line and warnings for one file; raises (exit 2) what a run would fail on."""
    from devctl_dist.workflows.graph_format import count_steps, workflow_mode
    from devctl_dist.workflows.lint import lint_workflow  # Jinja2: only when a file loaded
    from devctl_dist.workflows.loader import locate_step

    workflow, warnings = load_checked(path)
    problems = lint_workflow(workflow, variables)
    if problems:
        first = problems[0]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        line = locate_step(path, first.step) if first.step else None
        raise WorkflowValidationError(f"{first}{more}", path, line)
    ok = f"OK: {path}: {count_steps(workflow)} steps ({workflow_mode(workflow)})"
    return [ok, *(f"warning: {path}: {warning}" for warning in warnings)]


@click.command("graph", epilog=EPILOG_GRAPH)
@click.argument("file", type=click.Path(dir_okay=False))
@click.option(
    "--format",
    "-f",
    "fmt",
    type=LazyChoice("devctl_dist.workflows.graph_format", "GRAPH_FORMATS"),
    default="text",
    help=HELP["graph-format"],
)
@click.pass_obj
def graph_command(state: CliState, file: str, fmt: str) -> None:
    """Draw a workflow: steps, parallel blocks (as clusters) and dependencies."""
    from devctl_dist.workflows.graph_format import format_graph

    with starts_nothing(state):
        workflow, warnings = load_checked(file)
        for warning in warnings:
            click.echo(f"devctl: warning: {warning}", err=True)
        with invalid_input():
            text = format_graph(workflow, fmt)
    click.echo(text, nl=False)
