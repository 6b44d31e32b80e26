"""The Redis keys through which workers report to the coordinator, and the worker's side of them.

Per task (``task_id`` = ``run:step:attempt``):

- ``devctl:lease:{task_id}``   ``worker|started_at``, set when the step starts, renewed
  while it runs, deleted at the end: its expiry means the worker died.
- ``devctl:outcome:{task_id}`` the ``StepOutcome`` JSON; first writer wins (``SET NX``).
- ``devctl:cancel:{task_id}``  set by the coordinator before a revoke; a task that
  finds it at start does not run (revokes live in worker memory only, this survives).

Per run: ``devctl:run:{run_id}:done``, a list the worker pushes each finished task id
onto; the coordinator's one reader pops it (BLPOP). The outcome is written in
the same MULTI as the push, so a report is never seen before its outcome.
Celery's own result backend is not used for this: result state is not monotonic.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import redis

from devctl_dist.runners.base import StepOutcome


def done_key(run_id: str) -> str:
    return f"devctl:run:{run_id}:done"


def outcome_key(task_id: str) -> str:
    return f"devctl:outcome:{task_id}"


def lease_key(task_id: str) -> str:
    return f"devctl:lease:{task_id}"


def cancel_key(task_id: str) -> str:
    return f"devctl:cancel:{task_id}"


@dataclass(frozen=True)
class Lease:
    """Who runs a task and since when (wall clock of the worker)."""

    worker: str
    started_at: float

    def encode(self) -> str:
        return f"{self.worker}|{self.started_at}"

    @classmethod
    def decode(cls, raw: bytes | str) -> Lease:
        text = raw.decode() if isinstance(raw, bytes) else raw
        worker, _, started = text.rpartition("|")
        return cls(worker=worker, started_at=float(started or 0.0))


def encode_outcome(outcome: StepOutcome) -> str:
    return json.dumps(outcome.to_dict(), separators=(",", ":"))


def decode_outcome(raw: bytes | str) -> StepOutcome:
    data: dict[str, Any] = json.loads(raw)
    return StepOutcome.from_dict(data)


@dataclass(frozen=True)
class BeginResult:
    """What a worker learned when it claimed a task."""

    cancelled: bool
    ran_before: bool


class WorkerState:
    """The worker's (synchronous) side of the keys above."""

    def __init__(self, client: redis.Redis, lease_seconds: int, expires: int, cancel_ttl: int) -> None:
        self.client = client
        self.lease_seconds = lease_seconds
        self.expires = expires
        self.cancel_ttl = cancel_ttl

    def begin(self, task_id: str, worker: str) -> BeginResult:
        """Claim the task: read the cancel flag and any earlier lease, then take the lease.

        Runs as one MULTI, the mirror of the coordinator's cancel MULTI: either the
        coordinator sees the lease (and waits for the kill), or the worker sees
        the flag (and never starts the step).
        """
        pipe = self.client.pipeline(transaction=True)
        pipe.get(cancel_key(task_id))
        pipe.get(lease_key(task_id))
        pipe.set(lease_key(task_id), Lease(worker, time.time()).encode(), ex=self.lease_seconds)
        cancelled, earlier, _ = pipe.execute()
        if cancelled is not None:
            self.client.delete(lease_key(task_id))
        return BeginResult(cancelled=cancelled is not None, ran_before=earlier is not None)

    def renew(self, task_id: str, worker: str, started_at: float) -> None:
        """Re-set the lease while the step runs; re-creates it after a Redis restart wiped it."""
        self.client.set(lease_key(task_id), Lease(worker, started_at).encode(), ex=self.lease_seconds)

    def finish(self, task_id: str, run_id: str, outcome: StepOutcome) -> bool:
        """Publish the outcome unless one exists, and report the id; one MULTI, one round trip.

        Returns False when someone reported first (their outcome stands). The id is
        pushed either way: the reader ignores ids it already resolved.
        """
        run_list = done_key(run_id)
        pipe = self.client.pipeline(transaction=True)
        pipe.set(outcome_key(task_id), encode_outcome(outcome), ex=self.expires, nx=True)
        pipe.rpush(run_list, task_id)
        pipe.expire(run_list, self.expires)
        pipe.delete(lease_key(task_id))
        written, *_ = pipe.execute()
        return bool(written)

    def is_cancelled(self, task_id: str) -> bool:
        return bool(self.client.exists(cancel_key(task_id)))
