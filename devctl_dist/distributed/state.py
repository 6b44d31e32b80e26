"""The Redis keys through which workers report to the coordinator, and the worker's side of them.

Per task (``task_id`` = ``run:step:attempt``):

- ``devctl:lease:{task_id}``   ``worker|started_at``, set when the step starts, renewed
  while it runs, deleted at the end: its expiry means the worker died.
- ``devctl:outcome:{task_id}`` the ``StepOutcome`` JSON; first writer wins (``SET NX``).
- ``devctl:cancel:{task_id}``  set by the coordinator before a revoke; a task that
  finds it at start does not run (revokes live in worker memory only, this survives).

Per run, for exactly-once starts (``generation`` travels with each task):

- ``devctl:run:{run_id}:generation`` a counter; each coordinator of the run (the
  first one, each ``--resume``) takes the next number.
- ``devctl:run:{run_id}:live`` the generation of the coordinator running the run,
  with a short TTL it keeps renewing. A task whose generation is not the live one
  never starts: a run that is over (coordinator gone or finished), or superseded
  by a ``--resume``, can start nothing more.

Per run: ``devctl:run:{run_id}:done``, a list the worker pushes each finished task
onto (``{"t": id, "o": outcome}``, or the bare id when an outcome was there first);
the coordinator's one reader pops it (BLMPOP). The outcome is written in the same
script as the push, so a report is never seen before its outcome.
Celery's own result backend is not used for this: result state is not monotonic.
"""

from __future__ import annotations

import json
import os
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


def generation_key(run_id: str) -> str:
    return f"devctl:run:{run_id}:generation"


def live_key(run_id: str) -> str:
    return f"devctl:run:{run_id}:live"


@dataclass(frozen=True)
class Lease:
    """Who runs a task and since when (wall clock of the worker); ``pid``: the pool process."""

    worker: str
    started_at: float
    pid: int = 0

    def encode(self) -> str:
        return f"{self.worker}|{self.started_at}|p{self.pid}"

    @classmethod
    def decode(cls, raw: bytes | str) -> Lease:
        text = raw.decode() if isinstance(raw, bytes) else raw
        head, _, last = text.rpartition("|")
        pid = 0
        if last.startswith("p") and last[1:].isdigit():
            pid, (head, _, last) = int(last[1:]), head.rpartition("|")
        return cls(worker=head, started_at=float(last or 0.0), pid=pid)


def encode_outcome(outcome: StepOutcome) -> str:
    return json.dumps(outcome.to_dict(), separators=(",", ":"))


def decode_outcome(raw: bytes | str) -> StepOutcome:
    data: dict[str, Any] = json.loads(raw)
    return StepOutcome.from_dict(data)


# KEYS: cancel, lease, outcome[, live]; ARGV: new lease, its TTL, generation ("" = none),
# the lease expected now ("" = none). Sets the lease only when nothing refuses; replies
# {claimed, cancel flag, lease found, outcome exists, live generation}.
CLAIM_SCRIPT = """
local cancel = redis.call('GET', KEYS[1])
local lease = redis.call('GET', KEYS[2])
local finished = redis.call('EXISTS', KEYS[3])
local live = false
if #KEYS > 3 then live = redis.call('GET', KEYS[4]) end
local ok = finished == 0 and not cancel and (lease or '') == ARGV[4]
if ok and ARGV[3] ~= '' then ok = live and tonumber(live) == tonumber(ARGV[3]) end
if ok then redis.call('SET', KEYS[2], ARGV[1], 'EX', ARGV[2]) end
return {ok and 1 or 0, cancel, lease, finished, live}
"""


# KEYS: outcome, done list, lease; ARGV: outcome JSON, expiry, task id. The first report
# writes the outcome and pushes it with its id (the reader needs no second read); a later
# one pushes the bare id (its outcome is dropped: the first stands).
FINISH_SCRIPT = """
local written = redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2])
if written then
  redis.call('RPUSH', KEYS[2], '{"t":' .. cjson.encode(ARGV[3]) .. ',"o":' .. ARGV[1] .. '}')
else
  redis.call('RPUSH', KEYS[2], ARGV[3])
end
redis.call('EXPIRE', KEYS[2], ARGV[2])
redis.call('DEL', KEYS[3])
if written then return 1 end
return 0
"""


def decode_report(item: bytes | str) -> tuple[str, StepOutcome | None]:
    """An entry of a ``done`` list: (task id, its outcome when pushed with it).

    A bare id (a later report, or an older worker) means: read ``outcome_key``.
    Raises ``ValueError`` on an entry that is neither.
    """
    text = item.decode() if isinstance(item, bytes) else item
    if not text.startswith("{"):  # run ids start with a letter or digit
        return text, None
    try:
        data = json.loads(text)
        return str(data["t"]), StepOutcome.from_dict(data["o"])
    except (KeyError, TypeError) as exc:
        raise ValueError(f"not a report: {text[:80]!r}") from exc


@dataclass(frozen=True)
class BeginResult:
    """What a worker learned when it claimed a task.

    ``refused``: why the step must not run (cancelled, or its run is over);
    ``earlier``: the lease found before this claim (a re-delivery of the task).
    """

    refused: str | None = None
    earlier: Lease | None = None
    duplicate: bool = False

    @property
    def cancelled(self) -> bool:
        return self.refused is not None

    @property
    def ran_before(self) -> bool:
        return self.earlier is not None


class WorkerState:
    """The worker's (synchronous) side of the keys above."""

    def __init__(self, client: redis.Redis, lease_seconds: int, expires: int, cancel_ttl: int) -> None:
        self.client = client
        self.lease_seconds = lease_seconds
        self.expires = expires
        self.cancel_ttl = cancel_ttl
        self._claim = client.register_script(CLAIM_SCRIPT)
        self._finish = client.register_script(FINISH_SCRIPT)

    def begin(
        self, task_id: str, worker: str, run_id: str | None = None, generation: int | None = None
    ) -> BeginResult:
        """Claim the task: check the cancel flag, the run's live generation and any earlier lease.

        One atomic script (one round trip): a coordinator that sets the cancel flag or a
        new generation either does so before the claim (the worker sees it, the step
        never starts) or after it (the coordinator sees the lease: the step started).
        An earlier lease is replaced only if it is still the one judged here.
        """
        keys = [cancel_key(task_id), lease_key(task_id), outcome_key(task_id)]
        if run_id is not None and generation is not None:
            keys.append(live_key(run_id))
        expected = b""
        while True:
            lease = Lease(worker, time.time(), os.getpid()).encode()
            gen = str(generation) if len(keys) > 3 else ""
            reply = self._claim(keys=keys, args=[lease, self.lease_seconds, gen, expected])
            claimed, cancelled, raw_earlier, finished, raw_live = reply
            earlier = Lease.decode(raw_earlier) if raw_earlier is not None else None
            if claimed:
                return BeginResult(earlier=earlier)
            if finished or (earlier is not None and _still_running_here(earlier, worker)):
                return BeginResult(earlier=earlier, duplicate=True)  # a re-delivered message
            refused = "cancelled before start" if cancelled is not None else None
            if refused is None and generation is not None:
                refused = _generation_refusal(raw_live, generation)
            if refused is not None:
                return BeginResult(refused=refused, earlier=earlier)
            expected = _raw(raw_earlier)  # a lease of a lost attempt: take it over, if it is still that one

    def renew(self, task_id: str, worker: str, started_at: float) -> None:
        """Re-set the lease while the step runs; re-creates it after a Redis restart wiped it."""
        lease = Lease(worker, started_at, os.getpid())
        self.client.set(lease_key(task_id), lease.encode(), ex=self.lease_seconds)

    def finish(self, task_id: str, run_id: str, outcome: StepOutcome | dict[str, Any]) -> bool:
        """Publish the outcome unless one exists, and report it; one script, one round trip.

        Returns False when someone reported first (their outcome stands). The id is
        pushed either way: the reader ignores ids it already resolved.
        """
        data = outcome if isinstance(outcome, dict) else outcome.to_dict()
        encoded = json.dumps(data, separators=(",", ":"))
        keys = [outcome_key(task_id), done_key(run_id), lease_key(task_id)]
        return bool(self._finish(keys=keys, args=[encoded, self.expires, task_id]))

    def is_cancelled(self, task_id: str) -> bool:
        return bool(self.client.exists(cancel_key(task_id)))


def _raw(value: bytes | str | None) -> bytes:
    if value is None:
        return b""
    return value if isinstance(value, bytes) else value.encode()


def _generation_refusal(raw_live: bytes | None, generation: int) -> str | None:
    """Why a task of ``generation`` must not start, given the run's live generation."""
    if raw_live is None:
        return "not started: the run is over (its coordinator finished or is gone)"
    live = int(raw_live)
    if live != generation:
        return f"not started: the run was resumed (generation {live} replaces {generation})"
    return None


def _still_running_here(earlier: Lease, worker: str) -> bool:
    """The same task already runs in a live pool process of this worker: a duplicate delivery.

    Happens when kombu restores an unacknowledged message after a broker blip while
    the step still runs. A lease of a dead pool process (a lost child) is not one.
    """
    if earlier.worker != worker or earlier.pid <= 0 or earlier.pid == os.getpid():
        return False
    try:
        os.kill(earlier.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
