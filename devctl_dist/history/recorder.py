"""The listener that records a run as it changes: the run store (SQLite) and one log file per step.

Step updates are batched into one transaction every ``flush_interval`` seconds
(a 10,000-step run must not pay a commit per event); the run's start and end
are written at once. Each step's output goes to its log file line by line, in
full, whatever its size: memory holds only the file buffers of running steps.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from pathlib import Path
from typing import IO, Any

from devctl_dist.core.reporting import OutputListener, run_outcome
from devctl_dist.core.results import RunResult, StepResult
from devctl_dist.history.paths import run_log_dir, safe_name
from devctl_dist.history.store import RunStore

log = logging.getLogger(__name__)

FLUSH_INTERVAL = 0.25
LOG_BUFFER = 64 * 1024


def exit_code_of(result: RunResult) -> int:
    """The exit code ``devctl run`` gives this result (0, 1, 3, 130, 143)."""
    if result.interrupted:
        return 143 if result.signal == signal.SIGTERM else 130
    if getattr(result, "fault", None):
        return 3
    return 0 if result.success else 1


class StepLogs:
    """Open log files of running steps (appending: a resumed run or a retry adds to the same file)."""

    def __init__(self, root: Path, run_id: str) -> None:
        self.root, self.run_id = root, run_id
        self.dir = str(run_log_dir(root, run_id))  # computed once: a 10,000-step run asks per step
        self.files: dict[str, IO[str]] = {}
        self.broken: set[str] = set()

    def path(self, name: str) -> Path:
        """Where ``name``'s log goes (``paths.step_log_path``)."""
        return Path(self.location(name))

    def location(self, name: str) -> str:
        """``path`` as text, without building a ``Path`` (the recorder stores text)."""
        return f"{self.dir}{os.sep}{safe_name(name)}.log"

    def write(self, name: str, line: str) -> None:
        handle = self.files.get(name)
        if handle is None:
            if name in self.broken:
                return
            path = self.path(name)
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                handle = self.files[name] = path.open(
                    "a", encoding="utf-8", errors="replace", buffering=LOG_BUFFER
                )
            except OSError as error:
                log.error("cannot write the log of step %s to %s: %s", name, path, error)
                self.broken.add(name)
                return
        handle.write(line + "\n")

    def close(self, name: str) -> None:
        handle = self.files.pop(name, None)
        if handle is not None:
            with contextlib.suppress(OSError):
                handle.close()

    def flush(self) -> None:
        for handle in self.files.values():
            with contextlib.suppress(OSError):
                handle.flush()

    def close_all(self) -> None:
        for name in list(self.files):
            self.close(name)


class HistoryRecorder(OutputListener):
    """Records one run in ``store``; ``run`` holds the static fields (workflow, file, hashes, ...)."""

    def __init__(
        self,
        store: RunStore,
        run: dict[str, Any],
        step_names: list[str],
        *,
        keep: set[str] | None = None,
        flush_interval: float = FLUSH_INTERVAL,
    ) -> None:
        self.store = store
        self.run = dict(run)
        self.step_names = step_names
        self.keep = keep or set()
        self.resumed = bool(run.get("resumed"))
        self.flush_interval = flush_interval
        self.run_id = ""
        self.logs: StepLogs | None = None
        self._updates: dict[str, dict[str, Any]] = {}
        self._timer: asyncio.TimerHandle | None = None

    def run_started(self, workflow: str, run_id: str, mode: str, step_names: list[str]) -> None:
        self.run_id = run_id
        self.logs = StepLogs(self.store.root, run_id)
        record = {**self.run, "run_id": run_id, "workflow": workflow, "mode": mode, "started_at": time.time()}
        self.store.begin_run(record, self.step_names, keep=self.keep)

    def step_started(self, name: str, attempt: int, block: str | None) -> None:
        fields: dict[str, Any] = {"state": "running", "attempts": attempt}
        if attempt == 1:
            fields["started_at"] = time.time()
            if self.resumed and self.logs is not None and self.logs.path(name).exists():
                self.logs.write(name, "--- devctl: run again by --resume ---")
        elif self.logs is not None:
            self.logs.write(name, f"--- devctl: attempt {attempt} ---")
        self._update(name, fields)

    def step_output(self, name: str, stream: str, line: str) -> None:
        if self.logs is not None:
            self.logs.write(name, line)

    def step_finished(self, result: StepResult) -> None:
        fields: dict[str, Any] = {
            "state": result.status.value,
            "exit_code": result.exit_code,
            "attempts": result.attempts,
            "started_at": result.started_at,
            "ended_at": result.ended_at,
            "error": result.error or result.skip_reason,
            "worker": result.worker,
            "result": result.to_dict(),
        }
        if self.logs is not None:
            self.logs.close(result.name)
            if not result.reused:
                fields["log"] = self.logs.location(result.name)
        self._update(result.name, fields)

    def run_finished(self, result: RunResult) -> None:
        super().run_finished(result)
        self.flush()
        state = run_outcome(result)
        try:
            self.store.finish_run(
                result.run_id, state, exit_code_of(result), result.ended_at, result.counts()
            )
        except Exception:
            log.exception("cannot record the end of run %s", result.run_id)

    def close(self) -> None:
        self.flush()
        if self.logs is not None:
            self.logs.close_all()

    def flush(self) -> None:
        """Write pending step updates in one transaction; flush log buffers (for ``logs --follow``)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        updates, self._updates = self._updates, {}
        if self.logs is not None:
            self.logs.flush()
        if updates and self.run_id:
            try:
                self.store.update_steps(self.run_id, updates)
            except Exception:
                log.exception("cannot record step updates of run %s", self.run_id)

    def _update(self, name: str, fields: dict[str, Any]) -> None:
        self._updates.setdefault(name, {}).update(fields)
        if self._timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self.flush()
                return
            self._timer = loop.call_later(self.flush_interval, self.flush)
