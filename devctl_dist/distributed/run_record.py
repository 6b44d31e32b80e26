"""A distributed run's record in Redis, with a TTL: its state and per-step states, as they change.

``devctl:run:{run_id}:record`` (hash: workflow, state, mode, coordinator, started_at,
ended_at, exit_code) and ``devctl:run:{run_id}:steps`` (hash: step name -> JSON of
its state, exit code, attempts, worker). Both expire ``result_expires`` seconds
after the last change. The coordinator's local run store keeps the full record
and the logs; this one is for whoever watches the cluster, not only the machine
that ran ``devctl run``. Writes are batched like the local store's.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
from typing import Any

import redis

from devctl_dist.core.reporting import OutputListener, run_outcome
from devctl_dist.core.results import RunResult, StepResult
from devctl_dist.history.recorder import exit_code_of
from devctl_dist.settings import Settings

log = logging.getLogger(__name__)

FLUSH_INTERVAL = 0.5


def record_key(run_id: str) -> str:
    return f"devctl:run:{run_id}:record"


def steps_key(run_id: str) -> str:
    return f"devctl:run:{run_id}:steps"


class RedisRunRecord(OutputListener):
    """Mirrors the run's state into Redis (masked results only: it sits behind the masking listener)."""

    def __init__(self, settings: Settings) -> None:
        self.client = redis.Redis.from_url(
            settings.broker_url, socket_connect_timeout=2.0, socket_timeout=2.0
        )
        self.ttl = settings.result_expires
        self.run_id = ""
        self._fields: dict[str, Any] = {}
        self._steps: dict[str, str] = {}
        self._timer: asyncio.TimerHandle | None = None

    def run_started(self, workflow: str, run_id: str, mode: str, step_names: list[str]) -> None:
        self.run_id = run_id
        coordinator = f"{socket.gethostname()}:{os.getpid()}"
        self._fields.update(workflow=workflow, state="running", mode=mode, coordinator=coordinator)
        self._fields["started_at"] = time.time()
        self.flush()

    def step_started(self, name: str, attempt: int, block: str | None) -> None:
        self._step(name, {"state": "running", "attempts": attempt})

    def step_finished(self, result: StepResult) -> None:
        self._step(
            result.name,
            {
                "state": result.status.value,
                "exit_code": result.exit_code,
                "attempts": result.attempts,
                "worker": result.worker,
                "error": result.error,
            },
        )

    def run_finished(self, result: RunResult) -> None:
        super().run_finished(result)
        self._fields.update(
            state=run_outcome(result), ended_at=result.ended_at, exit_code=exit_code_of(result)
        )
        self.flush()

    def close(self) -> None:
        self.flush()
        self.client.close()

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self.run_id or not (self._fields or self._steps):
            return
        fields, steps, self._fields, self._steps = self._fields, self._steps, {}, {}
        pipe = self.client.pipeline(transaction=False)
        if fields:
            pipe.hset(record_key(self.run_id), mapping={k: str(v) for k, v in fields.items()})
        if steps:
            pipe.hset(steps_key(self.run_id), mapping=steps)  # type: ignore[arg-type]
        pipe.expire(record_key(self.run_id), self.ttl)
        pipe.expire(steps_key(self.run_id), self.ttl)
        try:
            pipe.execute()
        except (redis.RedisError, OSError) as error:  # the run goes on; the local store has it all
            log.warning("cannot record run %s in Redis: %s", self.run_id, type(error).__name__)

    def _step(self, name: str, fields: dict[str, Any]) -> None:
        self._steps[name] = json.dumps(fields)
        if self._timer is None:
            try:
                self._timer = asyncio.get_running_loop().call_later(FLUSH_INTERVAL, self.flush)
            except RuntimeError:
                self.flush()
