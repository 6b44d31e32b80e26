"""Find and kill a step's processes on this host by the task id in their environment.

A Celery revoke with terminate signals only the pool child; the step runs in
its own session, so it would be orphaned. Every step process carries
``DEVCTL_TASK_ID=<task id>`` in its environment (inherited by its children,
even ones that call ``setsid``), which lets the worker's main process find the
whole tree from ``/proc`` when the pool child is gone. Linux only.
"""

from __future__ import annotations

import signal
import time

from devctl_dist.runners import proctree

TASK_ID_ENV = "DEVCTL_TASK_ID"
WORKER_NAME_ENV = "DEVCTL_WORKER_NAME"


def marked_pids(task_id: str) -> list[int]:
    """Pids of live processes (not zombies) whose environment names ``task_id``."""
    return proctree.marked_pids(TASK_ID_ENV, task_id)


def signal_marked(task_id: str, signum: int) -> list[int]:
    """Send ``signum`` to each marked process and its process group; return the pids hit."""
    return proctree.signal_marked(TASK_ID_ENV, task_id, signum)


def kill_marked(task_id: str, grace: float) -> bool:
    """SIGTERM the step's processes, SIGKILL what survives ``grace`` seconds; True when none is left."""
    if not signal_marked(task_id, signal.SIGTERM):
        return True
    if _wait_gone(task_id, grace):
        return True
    signal_marked(task_id, signal.SIGKILL)
    return _wait_gone(task_id, 2.0)


def _wait_gone(task_id: str, timeout: float) -> bool:
    """Wait (bounded) until no marked process is left; /proc offers no event to wait on."""
    deadline = time.monotonic() + timeout
    while marked_pids(task_id):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True
