"""Pause the cyclic garbage collector while huge structures are built.

Parsing or planning 100k steps makes objects that all survive; full GC passes
over them cost more than the work itself (measured in bench/bench_graph.py).
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic GC inside the block (reference counting still frees what dies)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
