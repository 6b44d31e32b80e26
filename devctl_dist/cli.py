"""The ``devctl`` command line: parse options, call the engine, map errors to exit codes.

Thin on purpose: every rule lives in the engine, every display in
``core/output.py``. Exit codes: 0 success, 1 workflow failed, 2 invalid
workflow or usage, 130 interrupted. Every ``DevctlError`` becomes one line on
stderr (``devctl: error: ...``); ``--debug`` adds the traceback. The
distributed modules are imported only by the commands that need them, so a
local run never imports Celery.
"""

from __future__ import annotations

import logging
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import click

from devctl_dist.cli_help import EPILOG_GRAPH, EPILOG_MAIN, EPILOG_RUN, EPILOG_VALIDATE, HELP, RUN_HELP
from devctl_dist.core.exceptions import (
    DependencyCycleError,
    DevctlError,
    DuplicateStepError,
    GraphError,
    MissingDependencyError,
    UsageError,
    WorkflowError,
    WorkflowValidationError,
)
from devctl_dist.core.output import OUTPUT_FORMATS, finalize, make_listeners
from devctl_dist.runners.base import StepRunner
from devctl_dist.service_commands import BROKER_HELP, flower_command, worker_command
from devctl_dist.workflows.graph_format import (
    GRAPH_FORMATS,
    count_steps,
    format_graph,
    format_plan,
    workflow_mode,
)
from devctl_dist.workflows.loader import load_workflow, locate_step
from devctl_dist.workflows.schema import WorkflowSchema
from devctl_dist.workflows.validation import validate_workflow

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_INVALID = 2
EXIT_INTERRUPTED = 130

F = TypeVar("F", bound=Callable[..., Any])


# ---------------------------------------------------------------- error handling


@dataclass
class CliState:
    """Per-invocation state shared by the group and its commands (``ctx.obj``)."""

    debug: bool = False

    def enable_debug(self) -> None:
        self.debug = True
        logging.basicConfig(level=logging.DEBUG, format="%(asctime)s %(name)s %(levelname)s %(message)s")


def one_line(message: str) -> str:
    """Fold a message onto one line: a user reads one line per error."""
    return "; ".join(part.strip() for part in message.splitlines() if part.strip()) or "unknown error"


class DevctlGroup(click.Group):
    """A Click group that turns every error into one stderr line and an exit code."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        state = CliState()
        extra.setdefault("obj", state)
        code = _invoke_reporting_errors(
            lambda: super(DevctlGroup, self).main(
                args, prog_name or "devctl", complete_var, standalone_mode=False, **extra
            ),
            state,
        )
        if standalone_mode:
            sys.exit(code)
        return code


def _invoke_reporting_errors(call: Callable[[], Any], state: CliState) -> int:
    try:
        result = call()
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.Abort:
        click.echo("devctl: interrupted", err=True)
        return EXIT_INTERRUPTED
    except DevctlError as exc:
        _report(exc, state, f"devctl: error: {one_line(str(exc))}")
        return exc.exit_code
    except Exception as exc:  # a bug, not a bad input: still one line unless --debug
        hint = "" if state.debug else " (rerun with --debug for the traceback)"
        _report(exc, state, f"devctl: internal error: {type(exc).__name__}: {one_line(str(exc))}{hint}")
        return EXIT_FAILED
    return result if isinstance(result, int) else EXIT_OK


def _report(exc: BaseException, state: CliState, line: str) -> None:
    if state.debug:
        traceback.print_exception(exc, file=sys.stderr)
    click.echo(line, err=True)


@contextmanager
def invalid_input() -> Iterator[None]:
    """Errors while loading or checking a workflow mean invalid input: exit 2, whatever raised."""
    try:
        yield
    except DevctlError as exc:
        if exc.exit_code != EXIT_FAILED:
            raise
        raise WorkflowError(str(exc)) from exc


def parse_vars(pairs: Sequence[str]) -> dict[str, str]:
    """``KEY=VALUE`` pairs; split at the first ``=``, values stay strings (``a=b=c`` gives ``b=c``)."""
    values: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UsageError(f"--var {pair!r}: expected KEY=VALUE (for example --var env=prod)")
        values[key] = value
    return values


def load_checked(path: str) -> tuple[WorkflowSchema, list[str]]:
    """Load and validate a workflow file; returns it with its warnings. Raises exit-2 errors."""
    with invalid_input():
        workflow = load_workflow(path)
        try:
            warnings = validate_workflow(workflow)
        except GraphError as error:
            raise WorkflowValidationError(str(error), path, _graph_error_line(path, error)) from None
    return workflow, warnings


def _graph_error_line(path: str, error: GraphError) -> int | None:
    """Point at the step the graph error is about: the file and line make it actionable."""
    if isinstance(error, MissingDependencyError):
        return locate_step(path, error.step)
    if isinstance(error, DuplicateStepError):
        return locate_step(path, error.name, occurrence=-1)
    if isinstance(error, DependencyCycleError):
        return locate_step(path, error.cycle[0])
    return None


# ---------------------------------------------------------------- the group


@click.group(
    cls=DevctlGroup,
    epilog=EPILOG_MAIN,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(package_name="devctl-dist", prog_name="devctl")
@click.option("--debug", is_flag=True, help=HELP["debug"])
@click.pass_obj
def cli(state: CliState, debug: bool) -> None:
    """devctl: run YAML workflows (sequential steps, parallel blocks, dependency graphs)
    on this machine or on Celery workers."""
    if debug:
        state.enable_debug()


# ---------------------------------------------------------------- run


@dataclass
class RunOptions:
    """Everything ``devctl run`` accepts (also ``workflow run`` / ``workflow dry-run``)."""

    file: str
    variables: tuple[str, ...]
    dry_run: bool
    output: str
    results_file: str | None
    max_concurrent: int | None
    rate_limit: float | None
    distributed: bool
    broker: str | None
    resume: str | None
    debug: bool


def run_options(func: F) -> F:
    """The options shared by ``run`` and its aliases."""
    decorators = [
        click.argument("file", type=click.Path(dir_okay=False)),
        click.option("--var", "-v", "variables", multiple=True, metavar="KEY=VALUE", help=HELP["var"]),
        click.option("--dry-run", is_flag=True, help=HELP["dry-run"]),
        click.option(
            "--output",
            "-o",
            type=click.Choice(OUTPUT_FORMATS),
            default="table",
            show_default=True,
            help=HELP["output"],
        ),
        click.option(
            "--results-file", type=click.Path(dir_okay=False), metavar="PATH", help=HELP["results-file"]
        ),
        click.option(
            "--max-concurrent", type=click.IntRange(min=1), metavar="N", help=HELP["max-concurrent"]
        ),
        click.option(
            "--rate-limit", type=click.FloatRange(0, min_open=True), metavar="R", help=HELP["rate-limit"]
        ),
        click.option("--distributed", is_flag=True, help=HELP["distributed"]),
        click.option("--broker", metavar="URL", help=BROKER_HELP),
        click.option("--resume", metavar="RUN_ID", help=HELP["resume"]),
        click.option("--debug", is_flag=True, help=HELP["debug"]),
    ]
    for decorator in reversed(decorators):
        func = decorator(func)
    return func


def make_run_command(name: str, *, dry_run_only: bool = False) -> click.Command:
    """``run`` and its aliases; ``dry_run_only`` makes ``workflow dry-run``."""
    summary = RUN_HELP
    if dry_run_only:
        summary = "Show the waves a workflow would run in, under the concurrency cap, without running it."

    @click.command(name, help=summary, epilog=EPILOG_RUN)
    @run_options
    @click.pass_obj
    def command(state: CliState, /, **params: Any) -> None:
        options = RunOptions(**params)
        if dry_run_only:
            options.dry_run = True
        click.get_current_context().exit(run_workflow(state, options))

    return command


def run_workflow(state: CliState, options: RunOptions) -> int:
    """Load, check, then plan or run; returns the exit code."""
    if options.debug and not state.debug:
        state.enable_debug()
    variables = parse_vars(options.variables)
    if options.broker and not options.distributed:
        raise UsageError("--broker only applies with --distributed")
    if options.resume and not options.distributed:
        raise UsageError("--resume only applies with --distributed (step results live in Redis)")
    workflow, warnings = load_checked(options.file)
    for warning in warnings:
        click.echo(f"devctl: warning: {warning}", err=True)
    if options.dry_run:
        with invalid_input():
            plan = format_plan(workflow, options.max_concurrent, as_json=options.output == "json")
        click.echo(plan, nl=False)
        return EXIT_OK
    from devctl_dist.workflows.engine import WorkflowEngine  # validate/graph need no engine

    runner = celery_runner(options.broker, resume=options.resume is not None) if options.distributed else None
    listeners = make_listeners(
        options.output, results_file=options.results_file, stream=sys.stdout, is_tty=sys.stdout.isatty()
    )
    with invalid_input():
        engine = WorkflowEngine(
            workflow,
            runner=runner,
            listeners=listeners,
            variables=variables,
            max_concurrent=options.max_concurrent,
            rate_limit=options.rate_limit,
            run_id=options.resume,
        )
    try:
        result = engine.run()
    except BaseException:
        finalize(listeners, None)
        raise
    finalize(listeners, result)
    if result.interrupted:
        return EXIT_INTERRUPTED
    return EXIT_OK if result.success else EXIT_FAILED


def celery_runner(broker: str | None, *, resume: bool = False) -> StepRunner:
    """The distributed runner; imported here so local runs never load Celery."""
    from devctl_dist.distributed.runner import CeleryRunner
    from devctl_dist.settings import load_settings

    settings = load_settings(broker_url=broker) if broker else load_settings()
    runner: StepRunner = CeleryRunner(settings, resume=resume)
    return runner


# ---------------------------------------------------------------- validate, graph


@click.command("validate", epilog=EPILOG_VALIDATE)
@click.argument("file", type=click.Path(dir_okay=False))
def validate_command(file: str) -> None:
    """Check a workflow file: schema, unique names, dependencies, cycles, commands."""
    workflow, warnings = load_checked(file)
    click.echo(f"OK: {file}: {count_steps(workflow)} steps ({workflow_mode(workflow)})")
    for warning in warnings:
        click.echo(f"warning: {warning}")


@click.command("graph", epilog=EPILOG_GRAPH)
@click.argument("file", type=click.Path(dir_okay=False))
@click.option(
    "--format", "-f", "fmt", type=click.Choice(GRAPH_FORMATS), default="text", help=HELP["graph-format"]
)
def graph_command(file: str, fmt: str) -> None:
    """Draw a workflow: steps, parallel blocks (as clusters) and dependencies."""
    with invalid_input():
        text = format_graph(load_workflow(file), fmt)
    click.echo(text, nl=False)


# ---------------------------------------------------------------- wiring


@click.group("workflow")
def workflow_group() -> None:
    """The original devctl's spelling: `devctl workflow run|validate|dry-run FILE`."""


run_command = make_run_command("run")
cli.add_command(run_command)
cli.add_command(validate_command)
cli.add_command(graph_command)
cli.add_command(worker_command)
cli.add_command(flower_command)
cli.add_command(workflow_group)
workflow_group.add_command(run_command)
workflow_group.add_command(validate_command)
workflow_group.add_command(make_run_command("dry-run", dry_run_only=True))


def main() -> None:
    """Console-script entry point (``devctl``)."""
    cli.main(prog_name="devctl")
