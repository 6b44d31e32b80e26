"""The ``devctl`` command line: parse options, call the engine, map errors to exit codes.

Thin on purpose: every rule lives in the engine, every display in
``core/output.py``. Exit codes: 0 success, 1 a step failed, 2 invalid workflow
or usage, 3 infrastructure unavailable (broker, workers), 130 SIGINT, 143
SIGTERM. Every error, Click's usage errors included, becomes one line on stderr
(``devctl: error: ...``); ``--debug`` adds the traceback. The distributed
modules are imported only by the commands that need them, so a local run never
imports Celery.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import click

from devctl_dist import __version__
from devctl_dist.cli_check import (
    LazyChoice,
    graph_command,
    invalid_input,
    load_checked,
    starts_nothing,
    validate_command,
)
from devctl_dist.cli_errors import CliState, DevctlGroup, exit_now
from devctl_dist.cli_help import EPILOG_MAIN, EPILOG_RUN, HELP, RUN_HELP
from devctl_dist.cli_support import PipeSafeStream, parse_vars
from devctl_dist.core.exceptions import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_SIGINT,
    EXIT_SIGTERM,
    BrokerUnavailableError,
    InfrastructureError,
    UsageError,
)
from devctl_dist.service_commands import BROKER_HELP, flower_command, worker_command

if TYPE_CHECKING:  # the rest is imported by the commands that use it: start-up stays fast
    from devctl_dist.runners.base import StepRunner
    from devctl_dist.workflows.results import RunResult

__all__ = ["celery_runner", "cli", "load_checked", "main", "parse_vars"]

F = TypeVar("F", bound=Callable[..., Any])
BROKER_LOST_PREFIX = "step lost: the broker restarted"  # CeleryRunner's error for such steps


# ---------------------------------------------------------------- the group


@click.group(
    cls=DevctlGroup,
    epilog=EPILOG_MAIN,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(__version__, prog_name="devctl")  # not package_name: importlib.metadata is slow
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
    quiet: bool = False
    force: bool = False


def run_options(func: F) -> F:
    """The options shared by ``run`` and its aliases."""
    decorators = [
        click.argument("file", type=click.Path(dir_okay=False)),
        click.option("--var", "-v", "variables", multiple=True, metavar="KEY=VALUE", help=HELP["var"]),
        click.option("--dry-run", is_flag=True, help=HELP["dry-run"]),
        click.option(
            "--output",
            "-o",
            type=LazyChoice("devctl_dist.core.output", "OUTPUT_FORMATS"),
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
        click.option("--resume", metavar="RUN_ID|last", help=HELP["resume"]),
        click.option("--force", is_flag=True, help=HELP["force"]),
        click.option("--quiet", "-q", is_flag=True, help=HELP["quiet"]),
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
    if options.force and not options.resume:
        raise UsageError("--force only applies with --resume")
    if options.dry_run:
        with starts_nothing(state):
            return dry_run(options)
    workflow, warnings = load_checked(options.file)
    for warning in warnings:
        click.echo(f"devctl: warning: {warning}", err=True)
    from devctl_dist.cli_history import prepare_run
    from devctl_dist.core.output import finalize, make_listeners  # Rich: only for a real run
    from devctl_dist.workflows.engine import WorkflowEngine  # validate/graph need no engine

    history = prepare_run(
        options.file,
        workflow,
        variables,
        resume=options.resume,
        force=options.force,
        distributed=options.distributed,
        broker=options.broker,
    )
    runner = (
        celery_runner(
            options.broker,
            resume=options.resume is not None,
            workflow=workflow,
            secrets=history.masker.values,
        )
        if options.distributed
        else None
    )
    stdout: Any = PipeSafeStream(sys.stdout)  # `devctl run x | head -1`: the run goes on, quietly
    shown = make_listeners(
        options.output,
        results_file=options.results_file,
        stream=stdout,
        is_tty=sys.stdout.isatty(),
        quiet=options.quiet,
    )
    listeners = history.listeners(shown)
    with invalid_input():
        engine = WorkflowEngine(
            workflow,
            runner=runner,
            listeners=listeners,
            variables=variables,
            max_concurrent=options.max_concurrent,
            rate_limit=options.rate_limit,
            run_id=history.run_id,
            reuse=history.reuse,
        )
    try:
        result = engine.run()
    except BaseException:
        finalize(listeners, None)
        raise
    finalize(listeners, result)
    if result.fault is not None:  # the run stopped because the broker went away: exit 3, retry later
        if options.distributed:
            raise_if_broker_lost(options.broker, result)  # the line that names the broker
        raise InfrastructureError(result.fault)
    code = run_exit_code(result)
    if code == EXIT_FAILED and options.distributed:
        raise_if_broker_lost(options.broker, result)
    state.quick_exit = True  # every listener is closed, every step reaped: teardown would only free memory
    return code


def dry_run(options: RunOptions) -> int:
    """Check the file and print the waves it would run in."""
    from devctl_dist.workflows.graph_format import format_plan

    workflow, warnings = load_checked(options.file)
    for warning in warnings:
        click.echo(f"devctl: warning: {warning}", err=True)
    with invalid_input():
        plan = format_plan(workflow, options.max_concurrent, as_json=options.output == "json")
    click.echo(plan, nl=False)
    return EXIT_OK


def run_exit_code(result: RunResult) -> int:
    """0 success, 1 a step failed, 130 SIGINT, 143 SIGTERM (the shell's 128 + signal number)."""
    if result.interrupted:
        signum = getattr(result, "signal", None)  # RunResult.signal: which signal interrupted the run
        return EXIT_SIGTERM if signum == signal.SIGTERM else EXIT_SIGINT
    return EXIT_OK if result.success else EXIT_FAILED


def raise_if_broker_lost(broker: str | None, result: RunResult) -> None:
    """A failed distributed run caused by losing Redis is exit 3 (retry), not exit 1 (a step failed).

    Two signs: steps the broker lost when it restarted, or a broker that no longer answers.
    """
    from devctl_dist.settings import load_settings, redact_url

    url = (load_settings(broker_url=broker) if broker else load_settings()).broker_url
    lost = [r.name for r in result.steps.values() if (r.error or "").startswith(BROKER_LOST_PREFIX)]
    if lost:
        shown = ", ".join(f"'{name}'" for name in lost[:3]) + (", ..." if len(lost) > 3 else "")
        raise BrokerUnavailableError(
            f"broker {redact_url(url)} restarted during the run and lost {len(lost)} step(s) ({shown}): "
            "run again; run Redis with appendonly yes"
        )
    if not _broker_answers(url):
        raise BrokerUnavailableError(
            f"lost the broker {redact_url(url)} during the run: run again when it is back"
        )


def _broker_answers(url: str) -> bool:
    import redis  # only after a failed distributed run

    client = redis.Redis.from_url(url, socket_connect_timeout=2.0, socket_timeout=2.0)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


def celery_runner(
    broker: str | None, *, resume: bool = False, workflow: Any = None, secrets: list[str] | None = None
) -> StepRunner:
    """The distributed runner; imported here so local runs never load Celery.

    With ``workflow``, its start checks that every queue the steps name has a worker.
    """
    from devctl_dist.distributed.runner import CeleryRunner
    from devctl_dist.settings import load_settings
    from devctl_dist.workflows.validation import iter_steps

    settings = load_settings(broker_url=broker) if broker else load_settings()
    steps = iter_steps(workflow, hooks=True) if workflow is not None else iter(())
    queues = [step.queue or "" for step in steps if not step.is_block]
    runner: StepRunner = CeleryRunner(settings, resume=resume, queues=queues, secrets=secrets)
    return runner


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
cli.add_lazy_command("runs", "devctl_dist.cli_history:runs_group")  # run history: imported when used
cli.add_lazy_command("logs", "devctl_dist.cli_history:logs_command")
workflow_group.add_command(run_command)
workflow_group.add_command(validate_command)
workflow_group.add_command(make_run_command("dry-run", dry_run_only=True))


def main() -> None:
    """Console-script entry point (``devctl``)."""
    state = CliState(process_ends=True)
    try:
        cli.main(prog_name="devctl", obj=state)
    except SystemExit as done:
        if state.quick_exit and isinstance(done.code, int):
            exit_now(done.code)
        raise
