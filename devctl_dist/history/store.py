"""The run store: one SQLite database (standard library ``sqlite3``) under the state directory.

WAL mode, so ``devctl runs list`` or ``devctl logs --follow`` read while runs
write, and two ``devctl run`` processes can record at once (writers wait for
each other through ``busy_timeout``; every write is one short transaction).
One connection per process and database file. Values written here are already
masked (the recorder sees masked results only).
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from devctl_dist.core.exceptions import UsageError
from devctl_dist.history.paths import DB_NAME, state_dir

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, workflow TEXT NOT NULL, file TEXT, steps_hash TEXT, step_hashes TEXT,
    mode TEXT, distributed INTEGER NOT NULL DEFAULT 0, state TEXT NOT NULL, exit_code INTEGER,
    started_at REAL, ended_at REAL, pid INTEGER, host TEXT, counts TEXT, resumes INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS runs_by_start ON runs (started_at);
CREATE TABLE IF NOT EXISTS steps (
    run_id TEXT NOT NULL, name TEXT NOT NULL, position INTEGER NOT NULL, state TEXT NOT NULL,
    exit_code INTEGER, attempts INTEGER NOT NULL DEFAULT 0, started_at REAL, ended_at REAL,
    error TEXT, worker TEXT, log TEXT, result TEXT, PRIMARY KEY (run_id, name)
);
"""
RUN_COLUMNS = (
    "run_id, workflow, file, steps_hash, step_hashes, mode, distributed, state, exit_code, "
    "started_at, ended_at, pid, host, counts, resumes"
)
STEP_COLUMNS = "name, position, state, exit_code, attempts, started_at, ended_at, error, worker, log, result"
RUNNING = "running"
LOST = "lost"  # recorded as running, but its devctl process on this host is gone (killed)

_connections: dict[tuple[int, str], sqlite3.Connection] = {}
_lock = threading.Lock()


def connect(path: Path) -> sqlite3.Connection:
    """This process's connection to ``path`` (created with its schema on first use)."""
    key = (os.getpid(), str(path))
    with _lock:
        conn = _connections.get(key)
        if conn is None:
            path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(path, timeout=10.0, isolation_level=None, check_same_thread=False)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA busy_timeout = 10000")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.executescript(SCHEMA)
            _connections[key] = conn
    return conn


class RunStore:
    """Runs and their steps; every method is one transaction."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = root or state_dir()
        self.path = self.root / DB_NAME
        try:
            self.conn = connect(self.path)
        except (sqlite3.Error, OSError) as error:
            raise UsageError(f"cannot open the run store {self.path}: {error}") from None
        self._write_lock = threading.Lock()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT``: the write lock up front, so two writers never deadlock."""
        with self._write_lock:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            self.conn.execute("COMMIT")

    def begin_run(self, run: dict[str, Any], steps: Sequence[str], keep: Iterable[str] = ()) -> None:
        """Record a run that starts (or a resumed one: ``keep`` names the steps whose record stays)."""
        kept = set(keep)
        run = {**run, "pid": os.getpid(), "host": socket.gethostname(), "state": RUNNING}
        with self.transaction() as conn:
            old = conn.execute("SELECT resumes FROM runs WHERE run_id = ?", (run["run_id"],)).fetchone()
            run["resumes"] = 0 if old is None else old["resumes"] + 1
            names = [c.strip() for c in RUN_COLUMNS.split(",")]
            values = [_db_value(run.get(name)) for name in names]
            conn.execute(
                f"INSERT OR REPLACE INTO runs ({RUN_COLUMNS}) VALUES ({', '.join('?' * len(names))})", values
            )
            conn.execute(
                f"DELETE FROM steps WHERE run_id = ? AND name NOT IN ({', '.join('?' * len(kept))})",
                (run["run_id"], *kept),
            )
            rows = [
                (run["run_id"], name, index, "pending")
                for index, name in enumerate(steps)
                if name not in kept
            ]
            conn.executemany(
                "INSERT OR IGNORE INTO steps (run_id, name, position, state) VALUES (?, ?, ?, ?)", rows
            )
            conn.executemany(
                "UPDATE steps SET position = ? WHERE run_id = ? AND name = ?",
                [(index, run["run_id"], name) for index, name in enumerate(steps) if name in kept],
            )

    def update_steps(self, run_id: str, updates: dict[str, dict[str, Any]]) -> None:
        """Apply per-step column updates (``{name: {column: value}}``) in one transaction."""
        if not updates:
            return
        with self.transaction() as conn:
            for name, fields in updates.items():
                columns = ", ".join(f"{column} = ?" for column in fields)
                values = [_db_value(value) for value in fields.values()]
                conn.execute(
                    f"UPDATE steps SET {columns} WHERE run_id = ? AND name = ?", (*values, run_id, name)
                )

    def finish_run(
        self, run_id: str, state: str, exit_code: int | None, ended_at: float, counts: dict[str, int]
    ) -> None:
        with self.transaction() as conn:
            conn.execute(
                "UPDATE runs SET state = ?, exit_code = ?, ended_at = ?, counts = ? WHERE run_id = ?",
                (state, exit_code, ended_at, json.dumps(counts), run_id),
            )

    # ------------------------------------------------------------ reading

    def list_runs(self, limit: int = 20) -> list[dict[str, Any]]:
        rows = self.conn.execute(
            f"SELECT {RUN_COLUMNS} FROM runs ORDER BY started_at DESC LIMIT ?", (limit,)
        ).fetchall()
        return [_run_dict(row) for row in rows]

    def get_run(self, run_id: str) -> dict[str, Any] | None:
        """The run ``run_id`` (or the one run whose id starts with it)."""
        row = self.conn.execute(f"SELECT {RUN_COLUMNS} FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        if row is None and run_id:
            rows = self.conn.execute(
                f"SELECT {RUN_COLUMNS} FROM runs WHERE substr(run_id, 1, ?) = ? LIMIT 2",
                (len(run_id), run_id),
            ).fetchall()
            row = rows[0] if len(rows) == 1 else None
        return _run_dict(row) if row is not None else None

    def latest(self, file: str | None = None) -> dict[str, Any] | None:
        """The most recently started run (of ``file``, when given)."""
        if file is None:
            row = self.conn.execute(
                f"SELECT {RUN_COLUMNS} FROM runs ORDER BY started_at DESC LIMIT 1"
            ).fetchone()
        else:
            row = self.conn.execute(
                f"SELECT {RUN_COLUMNS} FROM runs WHERE file = ? ORDER BY started_at DESC LIMIT 1", (file,)
            ).fetchone()
        return _run_dict(row) if row is not None else None

    def steps(self, run_id: str) -> list[dict[str, Any]]:
        rows = self.conn.execute(
            f"SELECT {STEP_COLUMNS} FROM steps WHERE run_id = ? ORDER BY position", (run_id,)
        ).fetchall()
        return [_step_dict(row) for row in rows]


def _db_value(value: Any) -> Any:
    if isinstance(value, dict | list):
        return json.dumps(value)
    if isinstance(value, bool):
        return int(value)
    return value


def _run_dict(row: sqlite3.Row) -> dict[str, Any]:
    data = dict(row)
    data["step_hashes"] = json.loads(data["step_hashes"]) if data["step_hashes"] else {}
    data["counts"] = json.loads(data["counts"]) if data["counts"] else {}
    data["distributed"] = bool(data["distributed"])
    if data["state"] == RUNNING and data["host"] == socket.gethostname() and not _alive(data["pid"]):
        data["state"] = LOST
    return data


def _step_dict(row: sqlite3.Row) -> dict[str, Any]:
    data = dict(row)
    data["result"] = json.loads(data["result"]) if data["result"] else None
    return data


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
