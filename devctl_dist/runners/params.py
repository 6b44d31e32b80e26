"""Turn a step's ``params`` mapping into shell arguments.

Every value goes through ``shlex.quote`` and every key must be a plain word, so
a parameter can never inject shell syntax into a ``!`` command.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Mapping
from typing import Any

_KEY = re.compile(r"[A-Za-z0-9_.-]+")


def format_params(params: Mapping[str, Any]) -> str:
    """Render ``params`` as `` --key value`` pairs, each value shell-quoted.

    ``True`` gives a bare ``--key``; ``False`` and ``None`` are omitted; a list
    or tuple repeats ``--key v`` per item; a dict becomes one JSON argument.
    Raises ``ValueError`` for a key that is not ``[A-Za-z0-9_.-]+``.
    """
    parts: list[str] = []
    for key, value in params.items():
        if not isinstance(key, str) or not _KEY.fullmatch(key):
            raise ValueError(f"invalid parameter name {key!r}: use letters, digits, '_', '.', '-'")
        flag = f" --{key}"
        if value is None or value is False:
            continue
        if value is True:
            parts.append(flag)
        elif isinstance(value, list | tuple):
            parts.extend(f"{flag} {shlex.quote(_scalar(item))}" for item in value if item is not None)
        else:
            parts.append(f"{flag} {shlex.quote(_scalar(value))}")
    return "".join(parts)


def shell_command(command: str, params: Mapping[str, Any]) -> str:
    """Return ``command`` followed by its formatted ``params``."""
    return command + format_params(params)


def _scalar(value: Any) -> str:
    """One argument's text: JSON for containers, lower-case booleans, ``str`` otherwise."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list | tuple):
        return json.dumps(value, default=str)
    return str(value)
