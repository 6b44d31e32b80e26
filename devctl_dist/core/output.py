"""What users see while a run goes: listeners that turn scheduler events into output.

The scheduler never prints; listeners do (doit's Reporter idea). Four
listeners: a live table for terminals (``live_table.py``, the only module
that imports Rich), plain timestamped lines for logs and pipes, one JSON
document for machines and a JSON result file (``reporting.py``).
``make_listeners`` picks them from the CLI's options.
"""

from __future__ import annotations

from typing import IO

from devctl_dist.core.events import RunListener
from devctl_dist.core.exceptions import UsageError
from devctl_dist.core.live_table import LiveTableListener, make_console
from devctl_dist.core.reporting import (
    JsonListener,
    OutputListener,
    PlainListener,
    ResultsFileListener,
    finalize,
    format_duration,
)

__all__ = [
    "OUTPUT_FORMATS",
    "JsonListener",
    "LiveTableListener",
    "OutputListener",
    "PlainListener",
    "ResultsFileListener",
    "finalize",
    "format_duration",
    "make_console",
    "make_listeners",
]

OUTPUT_FORMATS = ("table", "plain", "json")


def make_listeners(
    output: str, *, results_file: str | None, stream: IO[str], is_tty: bool, quiet: bool = False
) -> list[RunListener]:
    """Listeners for ``--output`` (``table`` on a non-terminal: plain lines); ``quiet``: states only."""
    if output not in OUTPUT_FORMATS:
        raise UsageError(f"--output {output!r}: choose one of {', '.join(OUTPUT_FORMATS)}")
    listeners: list[RunListener] = []
    if results_file:
        listeners.append(ResultsFileListener(results_file))
    if output == "json":
        listeners.append(JsonListener(stream))
    elif output == "table" and is_tty:
        listeners.append(LiveTableListener(make_console(stream, is_tty), quiet=quiet))
    else:
        listeners.append(PlainListener(stream, quiet=quiet))
    return listeners
