"""Run one devctl command plugin in its own process.

``python -m devctl_dist.runners.plugin_host NAME PARAMS_JSON``: the runner
starts plugins this way so a plugin step is a process group like any shell
step, and timeouts and cancellation kill it the same way.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from devctl_dist.runners.commands import invoke_command


def main(argv: list[str] | None = None) -> int:
    """Parse ``NAME [PARAMS_JSON]``, run the plugin, return its exit code."""
    args = sys.argv[1:] if argv is None else argv
    if not 1 <= len(args) <= 2:
        print("usage: python -m devctl_dist.runners.plugin_host NAME [PARAMS_JSON]", file=sys.stderr)
        return 2
    try:
        params: Any = json.loads(args[1]) if len(args) == 2 else {}
    except json.JSONDecodeError as error:
        print(f"devctl: invalid params for '{args[0]}': {error}", file=sys.stderr)
        return 2
    if not isinstance(params, dict):
        print(f"devctl: params for '{args[0]}' must be a JSON object", file=sys.stderr)
        return 2
    code = invoke_command(args[0], params)
    sys.stdout.flush()
    return code


if __name__ == "__main__":
    sys.exit(main())
