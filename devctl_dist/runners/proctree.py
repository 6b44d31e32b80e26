"""Find a step's processes on this host by a marker in their environment (Linux ``/proc``).

A step runs in its own session, and killing that session's process group is
not enough: a command may start a new group or session (coreutils ``timeout``,
``setsid``, daemons). Every step process carries ``NAME=<unique value>`` in its
environment, inherited by all its descendants whatever group they move to, so
a scan of ``/proc/*/environ`` finds the whole tree. A process that replaces its
environment (``env -i``) drops the marker and is not found.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import secrets

STEP_TOKEN_ENV = "DEVCTL_STEP_TOKEN"
RUN_ID_ENV = "DEVCTL_RUN_ID"  # every local step process knows its run (and --resume finds leftovers by it)


_prefix = {"pid": 0, "value": ""}
_counter = itertools.count()


def new_token() -> str:
    """A marker value no other step on this host carries.

    A random prefix per process (so pid reuse cannot collide, and redrawn in a
    forked child) and a counter: one ``getrandom`` per process, not per step.
    """
    pid = os.getpid()
    if _prefix["pid"] != pid:
        _prefix["pid"], _prefix["value"] = pid, secrets.token_hex(8)
    return f"{_prefix['value']}{next(_counter):x}"


def marked_pids(name: str, value: str) -> list[int]:
    """Pids of live processes (not zombies, not this one) whose environment has ``name=value``."""
    needle = f"{name}={value}\0".encode()
    own = os.getpid()
    found: list[int] = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return found
    for entry in entries:
        if not entry.isdigit() or int(entry) == own:
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as handle:
                data = handle.read()
        except OSError:
            continue
        if data.startswith(needle) or b"\0" + needle in data:  # a zombie's environ is empty
            found.append(int(entry))
    return found


def signal_marked(name: str, value: str, signum: int) -> list[int]:
    """Send ``signum`` to each marked process and to its process group; return the pids found.

    Groups are signalled too, so a child forked between the scan and the kill
    (it is in its parent's group) is hit as well. Our own group is never signalled.
    """
    own_group = os.getpgrp()
    pids = marked_pids(name, value)
    groups: set[int] = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            groups.add(os.getpgid(pid))
    for group in groups - {own_group, 0, 1}:
        with contextlib.suppress(OSError):
            os.killpg(group, signum)
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signum)
    return pids


def group_exists(pgid: int) -> bool:
    """True while any process (zombies included) is in group ``pgid``."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def group_has_live_members(pgid: int) -> bool:
    """True if a process of group ``pgid`` is still running (zombies do not count).

    Killed orphans are reparented to init; an init that does not reap leaves
    them as zombies, which hold no resources and run no code.
    """
    if not group_exists(pgid):
        return False
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
            return True
    return False
