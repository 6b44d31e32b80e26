"""Commands that ship with devctl (entry-point group ``devctl.commands``)."""

from __future__ import annotations

from typing import Any


def echo(params: dict[str, Any]) -> int:
    """Print ``message``; else the extra words; else every param as ``key=value``.

    The smallest useful plugin: workflows and tests use it to prove plugin
    steps run, and it shows plugin authors the calling convention.
    """
    if "message" in params:
        print(params["message"])
    elif "args" in params and len(params) == 1:
        print(" ".join(str(word) for word in params["args"]))
    else:
        print(" ".join(f"{key}={value}" for key, value in params.items()))
    return 0
