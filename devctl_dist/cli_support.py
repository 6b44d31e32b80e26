"""Small pieces of the command line that are not Click: typed ``--var`` values, file
globs, and a stdout that survives ``| head``.

Kept out of ``cli.py`` so the command module stays about commands; everything
here is plain Python and cheap to import (``devctl validate`` must start fast).
"""

from __future__ import annotations

import glob
import os
import re
import sys
from collections.abc import Iterable, Sequence
from typing import IO, Any

from devctl_dist.core.exceptions import UsageError

_BOOL_WORDS = frozenset({"true", "false"})
_QUOTES = ("'", '"')
_GLOB_MAGIC = re.compile(r"[*?[]")


# ---------------------------------------------------------------- --var


def parse_vars(pairs: Sequence[str]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs split at the first ``=`` (``a=b=c`` gives ``b=c``), values typed."""
    values: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UsageError(f"--var {pair!r}: expected KEY=VALUE (for example --var env=prod)")
        values[key] = typed_value(value)
    return values


def typed_value(text: str) -> Any:
    """A ``--var`` value typed like a YAML scalar, so ``condition: "n > 5"`` works with ``--var n=10``.

    ``true``/``false`` become booleans and numbers become int/float, but only when the
    number reads back exactly as written: ``1.10`` (a version), ``007`` or ``1e3`` stay
    strings, as do ``yes``/``no``/``null`` and anything that parses as a list or mapping.
    A quoted value (``"'10'"``) is the string inside the quotes. Unquoted text is
    kept verbatim (YAML would drop a `` #comment`` or surrounding spaces).
    """
    import yaml  # only when a --var is given

    stripped = text.strip()
    try:
        parsed = yaml.safe_load(stripped) if stripped else None
    except yaml.YAMLError:
        return text
    if stripped.startswith(_QUOTES):
        return parsed if isinstance(parsed, str) else text
    if isinstance(parsed, bool):
        return parsed if stripped.lower() in _BOOL_WORDS else text
    if isinstance(parsed, int) and str(parsed) == stripped.removeprefix("+"):
        return parsed
    if isinstance(parsed, float) and repr(parsed) == stripped.removeprefix("+"):
        return parsed
    return text


# ---------------------------------------------------------------- file arguments


def expand_paths(patterns: Iterable[str]) -> list[tuple[str, bool]]:
    """Each argument as ``(path, matched)``: a quoted glob is expanded here (sorted), like a shell would.

    A pattern that matches nothing is kept as ``(pattern, False)`` so the caller can
    report it; a name that exists as written is never treated as a pattern.
    """
    expanded: list[tuple[str, bool]] = []
    for pattern in patterns:
        if os.path.lexists(pattern) or not _GLOB_MAGIC.search(pattern):
            expanded.append((pattern, True))
            continue
        matches = sorted(glob.glob(pattern, recursive=True))
        files = [m for m in matches if not os.path.isdir(m)]
        if files:
            expanded.extend((match, True) for match in files)
        else:
            expanded.append((pattern, False))
    return expanded


# ---------------------------------------------------------------- stdout that may close early


class PipeSafeStream:
    """A text stream over stdout that goes quiet when the reader hangs up (``devctl run x | head -1``).

    The run goes on (a deploy is not aborted because a pager closed): after the
    first ``BrokenPipeError`` stdout points at ``/dev/null`` and writes are dropped.
    """

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream
        self.broken = False

    def write(self, text: str) -> int:
        if self.broken:
            return len(text)
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._hang_up()
            return len(text)

    def flush(self) -> None:
        if self.broken:
            return
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._hang_up()

    def isatty(self) -> bool:
        return self._stream.isatty()

    def fileno(self) -> int:
        return self._stream.fileno()

    def __getattr__(self, name: str) -> Any:  # encoding, errors, ... for Rich and Click
        return getattr(self._stream, name)

    def _hang_up(self) -> None:
        self.broken = True
        silence_stdout()


def silence_stdout() -> None:
    """Point fd 1 at /dev/null, as the Python docs advise after a ``BrokenPipeError``.

    Without it the interpreter's final flush of ``sys.stdout`` raises again and
    prints "Exception ignored ... BrokenPipeError" on the way out.
    """
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # stdout already closed or not a real file
        pass
