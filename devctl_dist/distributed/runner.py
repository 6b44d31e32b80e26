"""``CeleryRunner``: the ``StepRunner`` that runs each step as a Celery task on a worker.

The scheduler (one for both modes) decides what runs when; this runner sends
one task per attempt (id ``run:step:attempt``), learns of its end from the
report list (``reports``), and on cancellation revokes it with terminate and
waits, bounded, for the worker's word that the step's processes are gone.

Sends and revokes are synchronous kombu calls: they run on one dedicated
thread so a slow broker never stalls the event loop (and kombu stays single-threaded).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import redis.asyncio as aioredis
from celery import Celery
from kombu.exceptions import OperationalError
from redis.exceptions import AuthenticationError, RedisError

from devctl_dist.core.exceptions import BrokerUnavailableError
from devctl_dist.core.secrets import Masker
from devctl_dist.distributed import kombu_patch, limits, signing
from devctl_dist.distributed.app import TASK_NAME, create_app
from devctl_dist.distributed.registry import served_queues, unserved
from devctl_dist.distributed.reports import Pending, ReportListener
from devctl_dist.distributed.resume import earlier_attempt
from devctl_dist.distributed.runs import RunLiveness, live_ttl
from devctl_dist.distributed.state import cancel_key, lease_key, outcome_key
from devctl_dist.distributed.streaming import OutputReaders
from devctl_dist.runners.base import OutputSink, StepOutcome, StepSpec
from devctl_dist.settings import Settings, redact_url

log = logging.getLogger(__name__)

REDIS_SCHEMES = ("redis://", "rediss://", "unix://", "redis+socket://")
_ERRNO_REASONS = {
    errno.ECONNREFUSED: "connection refused",
    errno.EHOSTUNREACH: "host unreachable",
    errno.ENETUNREACH: "network unreachable",
    errno.ETIMEDOUT: "connection timed out",
}
_KEEPALIVE = {socket.TCP_KEEPIDLE: 10, socket.TCP_KEEPINTVL: 5, socket.TCP_KEEPCNT: 3}
BROKER_CALL_LIMIT = 5.0  # seconds a revoke or close may take before the coordinator stops waiting
SEND_ERRORS = (OperationalError, RedisError, OSError)


class CeleryRunner:
    """Runs steps on devctl workers through Celery and Redis."""

    name = "distributed"

    def __init__(
        self,
        settings: Settings | None = None,
        resume: bool = False,
        queues: list[str] | None = None,
        secrets: list[str] | None = None,
    ) -> None:
        self.settings = settings or Settings()
        self.secrets = list(secrets or [])  # sent with each step: the worker masks its log and stream
        self.resume = resume  # informational: a run seen before is always resumed exactly once (resume.py)
        self.required_queues = [q or self.settings.default_queue for q in (queues or [])]
        self._app: Celery | None = None
        self._client: aioredis.Redis | None = None
        self._listener: ReportListener | None = None
        self._liveness: RunLiveness | None = None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="devctl-celery")
        self.workers: list[str] = []
        self._output = OutputReaders()  # step output streamed by workers, per run

    @property
    def broker(self) -> str:
        """The broker URL, password hidden: safe to print."""
        return redact_url(self.settings.broker_url)

    async def start(self) -> None:
        """Check the broker (fast) and that a worker answers; raise ``BrokerUnavailableError`` otherwise."""
        if not self.settings.broker_url.startswith(REDIS_SCHEMES):
            raise BrokerUnavailableError(f"distributed mode needs a Redis broker, got {self.broker}")
        self._client = _redis_client(self.settings)
        await self._check_broker(self._client)
        kombu_patch.reuse_clients()  # no new Redis client per send
        self._app = create_app(self.settings)
        self.workers = await self._call(self._ping_workers)
        if not self.workers:
            raise BrokerUnavailableError(
                f"no devctl worker answered on {self.broker} within {self.settings.worker_ping_timeout:g}s: "
                "start one with 'devctl worker'"
            )
        await self._check_queues(self._client)
        ttl = live_ttl(self.settings.reconcile_interval)
        self._liveness = RunLiveness(self._client, ttl, self.settings.result_expires)
        self._listener = ReportListener(self._client, self.settings, lost_check=self._lost_messages)
        self._listener.on_expired = self._forget_remote
        self._listener.on_tick = self._tick
        floor = ttl + self.settings.reconcile_interval + 2  # past it, no live marker is left
        self._listener.outage_limit = max(self.settings.broker_outage_limit, floor)
        await self._listener.start()

    async def _check_queues(self, client: aioredis.Redis) -> None:
        """Every queue the workflow names needs a live consumer, or the run fails now (exit 3)."""
        if not self.required_queues:
            return
        missing = unserved(self.required_queues, await served_queues(client))
        if missing:
            names = ", ".join(f"'{q}'" for q in missing)
            raise BrokerUnavailableError(
                f"no devctl worker consumes queue {names} on {self.broker}: "
                f"start one with 'devctl worker --queues {','.join(missing)}'"
            )

    async def _check_broker(self, client: aioredis.Redis) -> None:
        timeout = self.settings.broker_connect_timeout
        try:
            async with asyncio.timeout(timeout + 0.5):
                await client.ping()
        except (RedisError, OSError, TimeoutError) as exc:
            await _close_quietly(client)
            reason = _reason(exc, timeout)
            raise BrokerUnavailableError(
                f"cannot reach broker {self.broker} ({reason}): start Redis or set DEVCTL_BROKER_URL"
            ) from None

    def _ping_workers(self) -> list[str]:
        assert self._app is not None
        replies = self._app.control.ping(timeout=self.settings.worker_ping_timeout, limit=1) or []
        return sorted(name for reply in replies for name in reply)

    async def run(self, spec: StepSpec, output: OutputSink | None = None) -> StepOutcome:
        """Send the step as a task and wait for its report; on cancellation kill it remotely first.

        While it runs, its output lines come back through the run's output stream to ``output``.
        """
        listener, client = self._require()
        spec.secrets = sorted(set(spec.secrets) | set(self.secrets))
        if listener.broken is not None:
            return _not_started(listener.broken)
        try:
            task_id, reused, send = await self._prepare(spec, client)
            if reused is not None:
                return reused
            future = await listener.expect(spec, task_id)
        except (RedisError, OSError) as exc:
            return _not_started(f"cannot reach broker {self.broker} ({type(exc).__name__})")
        if output is not None:
            self._output.attach(client, spec, task_id, output)
        try:
            _raise_if_cancelling()
            if send:
                await self._call(self._send, spec, task_id, self._generation(spec))
            outcome = await asyncio.shield(future)
            await self._output.finish(spec.run_id, task_id, outcome.streamed)
            return outcome
        except asyncio.CancelledError:
            if not await asyncio.shield(self._cancel_remote(task_id, future)):
                return _cancel_unconfirmed(self.broker)  # it may still run: never call that "cancelled"
            raise
        except SEND_ERRORS as exc:
            return _not_started(f"cannot send to broker {self.broker} ({type(exc).__name__})")
        finally:
            listener.forget(task_id)
            self._output.detach(spec.run_id, task_id)

    async def _prepare(self, spec: StepSpec, client: aioredis.Redis) -> tuple[str, StepOutcome | None, bool]:
        """(task id, an outcome to reuse, whether to send): a run seen before is resumed exactly once."""
        assert self._liveness is not None
        generation = await self._liveness.join(spec.run_id)
        task_id = self._liveness.task_id(spec)
        if generation <= 1:
            return task_id, None, True
        earlier = await earlier_attempt(client, spec, generation)
        if earlier.outcome is not None:
            return task_id, earlier.outcome, False
        if earlier.adopt is not None:
            return earlier.adopt, None, False
        return task_id, None, True

    def _generation(self, spec: StepSpec) -> int:
        return self._liveness.generations.get(spec.run_id, 1) if self._liveness else 1

    def _send(self, spec: StepSpec, task_id: str, generation: int) -> None:
        """Publish the task without subscribing to its result channel (ignore_result)."""
        assert self._app is not None
        time_limit = limits.task_time_limit(self.settings, spec.timeout)
        body = spec.to_dict()
        kwargs: dict[str, Any] = {"generation": generation}
        key = signing.signing_key()
        if key is not None:
            kwargs["signature"] = signing.sign(key, spec.run_id, spec.name, body, generation)
        self._app.send_task(
            TASK_NAME,
            args=[spec.run_id, spec.name, body],
            kwargs=kwargs,
            task_id=task_id,
            queue=spec.queue or self.settings.default_queue,
            ignore_result=True,
            time_limit=time_limit,
            argsrepr=flower_args(spec),
            kwargsrepr="{}",
        )

    async def _cancel_remote(self, task_id: str, future: asyncio.Future[StepOutcome]) -> bool:
        """Forbid, revoke with terminate, and wait (bounded) for the report that nothing is left.

        False when the cancel could not even be recorded (no broker): the step may run anyway.
        """
        try:
            started = await self._forbid(task_id)
        except (RedisError, OSError) as exc:
            log.error("cannot cancel %s on %s: %s", task_id, self.broker, type(exc).__name__)
            return False
        if not started or future.done():
            return True
        try:
            async with asyncio.timeout(self.settings.kill_grace + 2.0):
                await asyncio.shield(future)
        except TimeoutError:
            log.warning("no word from the worker that %s is dead after revoke", task_id)
        except Exception as exc:  # the listener closed under us: nothing more to wait for
            log.warning("while cancelling %s: %s", task_id, exc)
        return True

    async def _forbid(self, task_id: str) -> bool:
        """Set the cancel flag and revoke; True when the task runs (a lease and no outcome yet)."""
        leased, finished = await self._flag(task_id)
        try:  # bounded: with the broker gone, kombu would retry the broadcast for long
            await asyncio.wait_for(self._call(self._revoke, task_id), BROKER_CALL_LIMIT)
        except (TimeoutError, *SEND_ERRORS) as exc:
            log.warning("revoke of %s not sent (%s); its cancel flag stands", task_id, type(exc).__name__)
        return leased and not finished

    async def _flag(self, task_id: str) -> tuple[bool, bool]:
        """Set the cancel flag; (leased, finished) in the same MULTI, the mirror of the worker's claim."""
        _, client = self._require()
        pipe = client.pipeline(transaction=True)
        pipe.set(cancel_key(task_id), "1", ex=limits.cancel_ttl(self.settings))
        pipe.exists(lease_key(task_id))
        pipe.exists(outcome_key(task_id))
        _, leased, finished = await pipe.execute()
        return bool(leased), bool(finished)

    async def _tick(self) -> None:
        """Every reconcile round: keep the runs live, end steps waiting where nobody will take them."""
        if self._liveness is not None:
            await self._liveness.renew()
        listener, client = self._require()
        waiting = [p for p in listener.pending.values() if p.waiting]
        if waiting:
            await self._end_hopeless_waits(waiting, await served_queues(client))

    async def _end_hopeless_waits(self, waiting: list[Pending], served: dict[str, list[str]]) -> None:
        """A step not started within its ``timeout``, or whose queue lost its last worker, ends here."""
        listener, _ = self._require()
        now = asyncio.get_running_loop().time()
        for pending in waiting:
            queue = pending.spec.queue or self.settings.default_queue
            reason = pending.hopeless(queue, served, now, self.settings.queue_orphan_limit)
            if reason is None:
                continue
            leased, finished = await self._flag(pending.task_id)
            if leased or finished:  # it started after all: its report will come
                continue
            timed_out = reason.startswith("timed out")
            outcome = StepOutcome(exit_code=None, error=reason, timed_out=timed_out, ended_at=time.time())
            listener.resolve(pending.task_id, outcome)

    async def _forget_remote(self, task_id: str) -> None:
        """A task given up as silent must never run later: flag it and revoke it."""
        with contextlib.suppress(RedisError, OSError):
            await self._forbid(task_id)

    def _revoke(self, task_id: str) -> None:
        assert self._app is not None
        self._app.control.revoke(task_id, terminate=True, signal="SIGTERM")

    async def _lost_messages(self, task_ids: list[str]) -> set[str]:
        """After a Redis restart: which unstarted tasks are in no queue and held by no worker."""
        _, client = self._require()
        queues = {self.settings.default_queue}
        listener = self._listener
        if listener is not None:
            queues |= {p.spec.queue for t, p in listener.pending.items() if t in task_ids and p.spec.queue}
        blobs = [_raw(v) for q in sorted(queues) for v in await client.lrange(q, 0, -1)]
        blobs += [_raw(v) for v in await client.hvals("unacked")]
        joined = b"\n".join(blobs)
        return {t for t in task_ids if t.encode() not in joined}

    async def _call(self, func: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._thread, func, *args)

    def _require(self) -> tuple[ReportListener, aioredis.Redis]:
        if self._listener is None or self._client is None:
            raise RuntimeError("CeleryRunner.start() was not called")
        return self._listener, self._client

    async def close(self) -> None:
        """Stop the reader and release connections; never raises."""
        await self._output.close()
        if self._listener is not None:
            await self._listener.close()
            self._listener = None
        if self._liveness is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._liveness.finish(), BROKER_CALL_LIMIT)
        if self._client is not None:
            await _close_quietly(self._client)
            self._client = None
        if self._app is not None:
            app, self._app = self._app, None
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._call(app.close), BROKER_CALL_LIMIT)
        self._thread.shutdown(wait=False)


def flower_args(spec: StepSpec) -> str:
    """What Flower shows as the task's arguments: run id, step name, the command (clipped).

    Never the step's ``env``, which may hold secrets; also cheaper than Celery's saferepr.
    """
    command = Masker(spec.secrets).mask(spec.command) if spec.secrets else spec.command
    command = command if len(command) <= 200 else command[:197] + "..."
    return repr((spec.run_id, spec.name, {"command": command, "attempt": spec.attempt}))


def _redis_client(settings: Settings) -> aioredis.Redis:
    """The coordinator's Redis client.

    ``socket_timeout=None`` (redis-py 8 defaults to 5 s): with a socket timeout,
    redis-py wraps each send in ``asyncio.wait_for``, which on Python 3.11 swallows
    a cancellation that races the reply (measured here: the report reader ignored
    ``cancel()`` about half the time). Dead peers are found by TCP keepalive
    instead (about 25 s), and BLPOP itself returns every few seconds.
    """
    return aioredis.Redis.from_url(
        settings.broker_url,
        socket_timeout=None,
        socket_connect_timeout=settings.broker_connect_timeout,
        socket_keepalive=True,
        socket_keepalive_options=_KEEPALIVE,
        health_check_interval=30,
    )


def _not_started(reason: str) -> StepOutcome:
    """A step never handed to a worker because the broker is away: the run cannot go on (exit 3)."""
    error = f"not started: {reason}"
    return StepOutcome(exit_code=None, error=error, ended_at=time.time(), infrastructure=True)


def _raw(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode()


def _raise_if_cancelling() -> None:
    """Re-raise a cancellation a library swallowed (Python 3.11 ``wait_for`` does, on a race)."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def _close_quietly(client: aioredis.Redis) -> None:
    with contextlib.suppress(Exception):
        await client.aclose()


def _reason(exc: BaseException, timeout: float) -> str:
    """A short, password-free reason for a failed broker check."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and len(chain) < 5:
        chain.append(current)
        current = current.__cause__ or current.__context__
    for error in chain:
        if isinstance(error, socket.gaierror):
            return "unknown host"
        if isinstance(error, OSError) and error.errno in _ERRNO_REASONS:
            return _ERRNO_REASONS[error.errno]
    text = str(exc).lower()
    if isinstance(exc, TimeoutError) or "timeout" in text or "timed out" in text:
        return f"no answer within {timeout:g}s"
    if isinstance(exc, AuthenticationError) or any(w in text for w in ("auth", "password", "wrongpass")):
        return "authentication failed"
    if "error 111" in text or "refused" in text:
        return "connection refused"
    return type(exc).__name__


def _cancel_unconfirmed(broker: str) -> StepOutcome:
    """A cancel the broker never heard of: the step's fate is unknown, and so is the run's (exit 3)."""
    error = f"outcome unknown: cannot cancel without the broker {broker}; it may still run on its worker"
    return StepOutcome(exit_code=None, error=error, ended_at=time.time(), infrastructure=True)
