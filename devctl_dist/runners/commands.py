"""devctl commands: plugins found through the entry-point group ``devctl.commands``.

A step ``command`` without ``!`` names a plugin. The entry-point name is the
command text with spaces replaced by dots (``argocd apps sync`` ->
``argocd.apps.sync``); when the whole text is not registered, the longest
registered prefix wins and the remaining words become ``params["args"]``
(``echo hello world`` -> plugin ``echo``, args ``["hello", "world"]``).

A plugin is a callable ``(params: dict[str, Any]) -> int | None`` that writes
to stdout/stderr; its return value is the exit code (``None`` means 0).
"""

from __future__ import annotations

import functools
import os
import sys
import traceback
from collections.abc import Callable
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from devctl_dist.core.exceptions import CommandNotFoundError

ENTRY_POINT_GROUP = "devctl.commands"

CommandFunc = Callable[[dict[str, Any]], int | None]


@functools.cache
def _registered() -> dict[str, EntryPoint]:
    """Scan installed distributions once: the scan costs tens of milliseconds."""
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def available_commands() -> dict[str, EntryPoint]:
    """Every installed devctl command, by entry-point name."""
    return dict(_registered())


def refresh_commands() -> None:
    """Forget the cached scan (after installing a plugin in the same process)."""
    _registered.cache_clear()


def split_command(command: str) -> tuple[str, list[str]]:
    """Split command text into (entry-point name, extra words).

    Tries the whole text first, then ever shorter prefixes of its words; when
    nothing is registered, returns the whole text as the name and no words.
    """
    words = command.split()
    registered = _registered()
    for size in range(len(words), 0, -1):
        name = ".".join(words[:size])
        if name in registered:
            return name, words[size:]
    return ".".join(words), []


def resolve_command(name: str) -> CommandFunc:
    """Load the plugin callable for ``name`` (dots or spaces between words).

    Raises ``CommandNotFoundError`` when no plugin of that name is installed or
    the entry point does not load a callable.
    """
    entry = _registered().get(".".join(name.split()))
    if entry is None:
        raise CommandNotFoundError(name)
    func = entry.load()
    if not callable(func):
        raise CommandNotFoundError(name)
    return func  # type: ignore[no-any-return]


def invoke_command(command: str, params: dict[str, Any]) -> int:
    """Run a devctl command in this process and return its exit code.

    Unknown command: 127 and ``devctl: unknown command '...'`` on stderr. A
    plugin exception: 1 and a one-line error (a traceback with DEVCTL_DEBUG=1).
    """
    name, args = split_command(command)
    try:
        func = resolve_command(name)
    except CommandNotFoundError:
        print(f"devctl: unknown command '{command}'", file=sys.stderr)
        return 127
    except Exception as error:
        print(f"devctl: cannot load command '{name}': {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    if args and "args" not in params:
        params = {**params, "args": args}
    return call_plugin(name, func, params)


def call_plugin(name: str, func: CommandFunc, params: dict[str, Any]) -> int:
    """Call a loaded plugin; map its return value or exception to an exit code."""
    try:
        return exit_code_of(func(params))
    except SystemExit as stop:
        return _system_exit_code(stop)
    except KeyboardInterrupt:
        return 130
    except Exception as error:
        if os.environ.get("DEVCTL_DEBUG") == "1":
            traceback.print_exc()
        else:
            print(f"devctl: {name}: {type(error).__name__}: {error}".splitlines()[0], file=sys.stderr)
        return 1


def exit_code_of(value: object) -> int:
    """A plugin's return value as a process exit code in 0..255."""
    if value is None:
        return 0
    if isinstance(value, bool):
        return 0 if value else 1
    if isinstance(value, int):
        return value & 0xFF if value & 0xFF or value == 0 else 1
    return 0


def _system_exit_code(stop: SystemExit) -> int:
    """Mirror the interpreter: an int code is the status, a message means 1."""
    if stop.code is None or isinstance(stop.code, int):
        return exit_code_of(stop.code)
    print(stop.code, file=sys.stderr)
    return 1
