"""How ``devctl`` reports errors: one line on stderr and an exit code, whatever went wrong.

Every ``DevctlError`` and every Click usage error becomes ``devctl: error: ...``
(``--debug`` adds the traceback); a bug becomes ``devctl: internal error: ...``.
A reader that leaves early (``devctl ... | head -1``) ends the command quietly.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import os
import sys
import threading
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import click

from devctl_dist.cli_support import silence_stdout
from devctl_dist.core.exceptions import EXIT_FAILED, EXIT_OK, EXIT_SIGINT, DevctlError


@dataclass
class CliState:
    """Per-invocation state shared by the group and its commands (``ctx.obj``)."""

    debug: bool = False
    quick_exit: bool = False  # the command started nothing: ``main`` may skip the interpreter's teardown
    process_ends: bool = False  # devctl's own process (``main``), not a caller's (CliRunner)

    def enable_debug(self) -> None:
        import logging  # only with --debug: nothing else on the validate path imports it

        self.debug = True
        logging.basicConfig(level=logging.DEBUG, format="%(asctime)s %(name)s %(levelname)s %(message)s")


def one_line(message: str) -> str:
    """Fold a message onto one line: a user reads one line per error."""
    return "; ".join(part.strip() for part in message.splitlines() if part.strip()) or "unknown error"


class DevctlGroup(click.Group):
    """A Click group that turns every error into one stderr line and an exit code.

    Commands added with ``add_lazy_command`` are imported when first asked for
    (their use, the help, completion): ``devctl validate`` needs none of them.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy_commands: dict[str, str] = {}  # name -> "module:attribute"

    def add_lazy_command(self, name: str, target: str) -> None:
        self.lazy_commands[name] = target

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = self.lazy_commands.get(cmd_name)
        if target is not None and cmd_name not in self.commands:
            module, _, attribute = target.partition(":")
            self.add_command(getattr(importlib.import_module(module), attribute), cmd_name)
        return super().get_command(ctx, cmd_name)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *self.lazy_commands})

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        obj = extra.setdefault("obj", CliState())
        state = obj if isinstance(obj, CliState) else CliState()
        code = _invoke_reporting_errors(
            lambda: super(DevctlGroup, self).main(
                args, prog_name or "devctl", complete_var, standalone_mode=False, **extra
            ),
            state,
        )
        flush_stdout()
        if standalone_mode:
            sys.exit(code)
        return code


def _invoke_reporting_errors(call: Callable[[], Any], state: CliState) -> int:
    try:
        result = call()
    except click.exceptions.NoArgsIsHelpError as exc:  # bare `devctl`: the help is the answer
        exc.show()
        return exc.exit_code
    except click.ClickException as exc:  # usage errors too: one line, like every other error
        report(exc, state, f"devctl: error: {_click_message(exc)}")
        return exc.exit_code
    except click.Abort:
        click.echo("devctl: interrupted", err=True)
        return EXIT_SIGINT
    except BrokenPipeError:  # stdout's reader left (`| head`): end quietly
        silence_stdout()
        return EXIT_FAILED
    except DevctlError as exc:
        report(exc, state, f"devctl: error: {one_line(str(exc))}")
        return exc.exit_code
    except Exception as exc:  # a bug, not a bad input: still one line unless --debug
        hint = "" if state.debug else " (rerun with --debug for the traceback)"
        report(exc, state, f"devctl: internal error: {type(exc).__name__}: {one_line(str(exc))}{hint}")
        return EXIT_FAILED
    return result if isinstance(result, int) else EXIT_OK


def _click_message(exc: click.ClickException) -> str:
    """Click's message, lower-cased like ours, plus where to find help for a usage error."""
    message = one_line(exc.format_message()).rstrip(".")
    message = message[:1].lower() + message[1:]
    ctx = exc.ctx if isinstance(exc, click.UsageError) else None
    if ctx is not None:
        message += f" (see '{ctx.command_path} --help')"
    return message


def flush_stdout() -> None:
    """Flush now, so a reader that left (`| head -1`) cannot make the interpreter's exit flush complain."""
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        silence_stdout()
    except (OSError, ValueError):  # closed or not a real stream: nothing left to flush
        pass


def report(exc: BaseException, state: CliState, line: str) -> None:
    if state.debug:
        traceback.print_exception(exc, file=sys.stderr)
    click.echo(line, err=True)


def exit_now(code: int) -> None:
    """End the process without the interpreter's teardown, when nothing else runs.

    Teardown frees every object one by one and runs a last full GC: 0.5 s after a
    100,000-step dry run, for nothing. What exit would do that matters still
    happens: the atexit handlers (logging's flush among them) and flushed streams.
    Returns, for a normal exit, if another thread is alive or a profiler or tracer
    (pyinstrument, cProfile, coverage) still has a report to write. Idle daemon
    threads that hold nothing (``IDLE_AT_EXIT``: the step-spawning threads, which
    wait for work once every step has ended) do not count.
    """
    busy = [thread for thread in threading.enumerate() if not _idle_at_exit(thread)]
    if len(busy) > 1 or sys.getprofile() is not None or sys.gettrace() is not None:
        return
    atexit._run_exitfuncs()
    flush_stdout()
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.flush()
    os._exit(code)


# Name prefix of daemon threads that hold no state once a command is over (runners/spawn.py).
IDLE_AT_EXIT = "devctl-spawn-"


def _idle_at_exit(thread: threading.Thread) -> bool:
    return thread.daemon and thread.name.startswith(IDLE_AT_EXIT)
