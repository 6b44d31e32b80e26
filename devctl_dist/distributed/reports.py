"""The coordinator's one reader of worker reports.

One coroutine BLMPOPs the per-run ``done`` lists (``state``) and resolves one
future per in-flight task: no per-task polling, no result-channel subscriptions.
Lists are durable where pub/sub is at-most-once; still, a report can be lost
with a connection or a Redis restart, so every ``reconcile_interval`` seconds and
after every reconnect one MGET of the in-flight outcome and lease keys catches
up, and decides the silent cases:

- lease seen, then expired without an outcome: the worker died;
- lease older than ``timeout + kill_grace + report_grace``: the worker is stuck;
- after a Redis restart (leases wiped), once workers had time to renew theirs:
  a task with no lease, no outcome and no message in a queue was lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from devctl_dist.distributed.state import (
    Lease,
    decode_outcome,
    decode_report,
    done_key,
    lease_key,
    outcome_key,
)
from devctl_dist.runners.base import StepOutcome, StepSpec
from devctl_dist.settings import Settings

log = logging.getLogger(__name__)

LostCheck = Callable[[list[str]], Awaitable[set[str]]]


@dataclass
class Pending:
    """One in-flight task as the coordinator sees it (``task_id``: its Celery id)."""

    spec: StepSpec
    future: asyncio.Future[StepOutcome]
    task_id: str = ""
    lease: Lease | None = None
    running_seen_at: float | None = None
    sent_at: float = 0.0
    orphan_since: float | None = None

    @property
    def waiting(self) -> bool:
        """Sent, not seen running, not decided."""
        return self.running_seen_at is None and not self.future.done()

    def hopeless(
        self, queue: str, served: dict[str, list[str]], now: float, orphan_limit: float
    ) -> str | None:
        """Why this waiting step should end now (a loop-clock ``now``), or None.

        Its ``timeout`` covers the time spent queued; a queue no live worker
        consumes is given ``orphan_limit`` seconds (workers restart).
        """
        timeout = self.spec.timeout
        if timeout is not None and now - self.sent_at > timeout:
            return (
                f"timed out after {timeout:g}s waiting in queue '{queue}': no worker took it (it never will)"
            )
        if served.get(queue):
            self.orphan_since = None
            return None
        self.orphan_since = self.orphan_since if self.orphan_since is not None else now
        if now - self.orphan_since > orphan_limit:
            return f"no worker served queue '{queue}' for {orphan_limit:g}s: not started (it never will)"
        return None


class ReportListener:
    """Resolves a future per task id from worker reports (one BLPOP reader)."""

    def __init__(
        self, client: aioredis.Redis, settings: Settings, lost_check: LostCheck | None = None
    ) -> None:
        self.client = client
        self.settings = settings
        self.pending: dict[str, Pending] = {}
        self._runs: set[str] = set()
        self._wake_key = f"devctl:coordinator:{uuid.uuid4().hex}:wake"
        self._reader: asyncio.Task[None] | None = None
        self._lost_check = lost_check
        self._server_id: str | None = None
        self.on_expired: Callable[[str], Awaitable[None]] | None = None
        self._closed = False
        self._restart_seen_at: float | None = None
        self._settle_time = settings.lease_seconds / 3 + 2.0
        self.on_tick: Callable[[], Awaitable[None]] | None = None
        self.outage_limit = settings.broker_outage_limit
        self.broken: str | None = None  # set when the broker stayed away past ``outage_limit``
        self._lost_since: float | None = None

    async def start(self) -> None:
        self._server_id = await self._redis_server_id()
        self._reader = asyncio.create_task(self._read_forever(), name="devctl-report-reader")

    async def close(self) -> None:
        self._closed = True
        reader = self._reader
        while reader is not None and not reader.done():
            reader.cancel()  # again if a library swallowed the previous cancel
            await asyncio.wait({reader}, timeout=1.0)
        with contextlib.suppress(RedisError, OSError):
            await self.client.delete(self._wake_key)
        for pending in self.pending.values():
            if not pending.future.done():
                pending.future.set_exception(ConnectionError("coordinator closed"))

    async def expect(self, spec: StepSpec, task_id: str | None = None) -> asyncio.Future[StepOutcome]:
        """Register a task (Celery id ``task_id``) before it is sent, so no report can arrive unclaimed."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[StepOutcome] = loop.create_future()
        task_id = task_id or spec.task_id
        self.pending[task_id] = Pending(spec, future, task_id=task_id, sent_at=loop.time())
        if spec.run_id not in self._runs:
            self._runs.add(spec.run_id)
            await self.client.rpush(self._wake_key, "1")  # re-BLPOP on the new run's list
            await self.client.expire(self._wake_key, 3600)
        return future

    def forget(self, task_id: str) -> None:
        self.pending.pop(task_id, None)

    def resolve(self, task_id: str, outcome: StepOutcome) -> None:
        pending = self.pending.get(task_id)
        if pending is not None and not pending.future.done():
            pending.future.set_result(outcome)

    async def _read_forever(self) -> None:
        last_reconcile = time.monotonic()
        backoff = 0.1
        reconnected = False
        while not self._closed:
            try:
                if reconnected:
                    await self._after_reconnect()
                    reconnected = False
                await self._read_once()
                backoff, self._lost_since = 0.1, None
                if time.monotonic() - last_reconcile >= self.settings.reconcile_interval:
                    last_reconcile = time.monotonic()
                    await self.reconcile()
                    await self._tick()
            except (RedisError, OSError) as exc:
                log.warning(
                    "report reader lost Redis (%s); reconnecting in %.1fs", type(exc).__name__, backoff
                )
                self._lost_since = self._lost_since or time.monotonic()
                if time.monotonic() - self._lost_since > self.outage_limit:
                    self._give_up_on_broker()
                await asyncio.sleep(backoff)  # back off before reconnecting, not a poll for results
                backoff = min(backoff * 2, 2.0)
                reconnected = True

    async def _tick(self) -> None:
        if self.on_tick is not None:
            await self.on_tick()

    def _give_up_on_broker(self) -> None:
        """The broker stayed away too long: end every waiting step with what is known of it.

        By now the run's live marker has expired (``outage_limit`` exceeds its TTL),
        so a step not seen running can never start later.
        """
        seconds = self.outage_limit
        if self.broken is None:
            log.error("broker unreachable for %.0fs: giving up on %d step(s)", seconds, len(self.pending))
        self.broken = f"lost the broker for {seconds:.0f}s"
        for pending in self.pending.values():
            if pending.future.done():
                continue
            if pending.running_seen_at is None:
                error = f"not started: {self.broken}; the run is over, so it never starts"
            else:
                worker = pending.lease.worker if pending.lease else "?"
                error = (
                    f"outcome unknown: {self.broken} while the step ran on {worker} "
                    "(it may finish there; --resume reuses it)"
                )
            outcome = StepOutcome(exit_code=None, error=error, ended_at=time.time(), infrastructure=True)
            self.resolve(pending.task_id, outcome)

    async def _read_once(self) -> None:
        keys = [self._wake_key, *(done_key(run) for run in sorted(self._runs))]
        # BLMPOP (Redis 7): block, then take up to 512 reports in the same round trip
        item = await self.client.blmpop(
            self.settings.reconcile_interval, len(keys), *keys, direction="LEFT", count=512
        )
        if not item:
            return
        key, values = item[0], item[1]
        if not isinstance(key, bytes | str) or _text(key) == self._wake_key or not isinstance(values, list):
            return
        bare = []
        for value in values:
            if not isinstance(value, bytes | str):
                continue
            try:
                task_id, outcome = decode_report(value)
            except ValueError as exc:  # never from a devctl worker; reconcile still finds the outcome
                log.warning("ignored a report: %s", exc)
                continue
            if outcome is None:
                bare.append(task_id)
            else:
                self.resolve(task_id, outcome)
        await self._resolve_ids(bare)

    async def _resolve_ids(self, ids: list[str]) -> None:
        wanted = [task_id for task_id in ids if task_id in self.pending]
        if not wanted:
            return
        raws = await self.client.mget([outcome_key(task_id) for task_id in wanted])
        for task_id, raw in zip(wanted, raws, strict=True):
            if raw is not None:
                self.resolve(task_id, decode_outcome(raw))

    async def reconcile(self) -> None:
        """Catch up on missed reports and decide tasks whose worker went silent."""
        ids = [task_id for task_id, p in self.pending.items() if not p.future.done()]
        if not ids:
            return
        pipe = self.client.pipeline(transaction=True)  # atomic: a lease gone means an outcome is there
        pipe.mget([outcome_key(task_id) for task_id in ids])
        pipe.mget([lease_key(task_id) for task_id in ids])
        outcomes, leases = await pipe.execute()
        now = time.monotonic()
        # After a Redis restart, leases are gone until workers renew them (lease_seconds / 3).
        settling = self._restart_seen_at is not None and now - self._restart_seen_at < self._settle_time
        unclaimed = []
        for task_id, raw_outcome, raw_lease in zip(ids, outcomes, leases, strict=True):
            if raw_outcome is not None:
                self.resolve(task_id, decode_outcome(raw_outcome))
            elif raw_lease is None and settling:
                continue
            else:
                await self._judge_silence(self.pending[task_id], raw_lease, now)
                if raw_lease is None and self.pending[task_id].running_seen_at is None:
                    unclaimed.append(task_id)
        if self._restart_seen_at is not None and not settling:
            self._restart_seen_at = None
            await self._fail_lost(unclaimed)

    async def _judge_silence(self, pending: Pending, raw_lease: bytes | None, now: float) -> None:
        spec = pending.spec
        if raw_lease is not None:
            pending.lease = Lease.decode(raw_lease)
            if pending.running_seen_at is None:
                pending.running_seen_at = now
            if spec.timeout is not None:
                limit = spec.timeout + self.settings.kill_grace + self.settings.report_grace
                if now - pending.running_seen_at > limit:
                    await self._give_up(
                        pending,
                        f"no report from worker {pending.lease.worker} {limit:.0f}s after the step started",
                        timed_out=True,
                    )
            return
        if pending.running_seen_at is not None:
            worker = pending.lease.worker if pending.lease else "?"
            await self._give_up(pending, f"worker {worker} was lost while running the step", timed_out=False)

    async def _give_up(self, pending: Pending, error: str, timed_out: bool) -> None:
        """Fail a silent task and make sure it cannot run later (the runner revokes it)."""
        log.error("step %s: %s", pending.task_id, error)
        if self.on_expired is not None:
            await self.on_expired(pending.task_id)
        self.resolve(
            pending.task_id,
            StepOutcome(exit_code=None, error=error, timed_out=timed_out, ended_at=time.time()),
        )

    async def _after_reconnect(self) -> None:
        """After a reconnect: catch up; if Redis restarted, judge unclaimed tasks once leases are back."""
        server_id = await self._redis_server_id()
        if self._server_id is not None and server_id != self._server_id:
            log.warning("Redis restarted (run_id changed): checking in-flight steps")
            self._restart_seen_at = time.monotonic()
        self._server_id = server_id
        await self._tick()  # first: re-create the live markers a restart lost, before workers claim
        await self.reconcile()

    async def _fail_lost(self, unclaimed: list[str]) -> None:
        """Unclaimed after a restart and in no queue: the restart lost the message (no persistence)."""
        if not unclaimed or self._lost_check is None:
            return
        for task_id in await self._lost_check(unclaimed):
            self.resolve(
                task_id,
                StepOutcome(
                    exit_code=None,
                    error="step lost: the broker restarted before a worker took it "
                    "(run Redis with appendonly yes)",
                    ended_at=time.time(),
                ),
            )

    async def _redis_server_id(self) -> str | None:
        info = await self.client.info("server")
        value = info.get("run_id")
        return str(value) if value is not None else None


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
