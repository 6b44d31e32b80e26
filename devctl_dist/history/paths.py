"""Where devctl keeps its run history: ``$DEVCTL_HOME``, else ``$XDG_STATE_HOME/devctl``, else
``~/.local/state/devctl`` (the XDG base directory spec's place for state that outlives a run)."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

DB_NAME = "runs.db"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def state_dir() -> Path:
    """The history directory (not created here)."""
    home = os.environ.get("DEVCTL_HOME")
    if home:
        return Path(home).expanduser()
    xdg = os.environ.get("XDG_STATE_HOME")
    base = Path(xdg).expanduser() if xdg and os.path.isabs(xdg) else Path.home() / ".local" / "state"
    return base / "devctl"


def safe_name(name: str, limit: int = 60) -> str:
    """A file name for any step or run name: readable part plus a short hash (names may hold ``/``)."""
    readable = _UNSAFE.sub("_", name).strip("._")[:limit] or "step"
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{readable}-{digest}"


def run_log_dir(root: Path, run_id: str) -> Path:
    return root / "logs" / safe_name(run_id, 80)


def step_log_path(root: Path, run_id: str, step: str) -> Path:
    return run_log_dir(root, run_id) / f"{safe_name(step)}.log"
