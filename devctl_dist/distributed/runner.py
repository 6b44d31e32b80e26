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
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import redis.asyncio as aioredis
from celery import Celery
from redis.exceptions import AuthenticationError, RedisError

from devctl_dist.core.exceptions import BrokerUnavailableError
from devctl_dist.distributed.app import TASK_NAME, create_app
from devctl_dist.distributed.reports import ReportListener
from devctl_dist.distributed.state import cancel_key, decode_outcome, lease_key, outcome_key
from devctl_dist.runners.base import StepOutcome, StepSpec
from devctl_dist.settings import Settings, redact_url

log = logging.getLogger(__name__)

REDIS_SCHEMES = ("redis://", "rediss://", "unix://", "redis+socket://")
TIME_LIMIT_MARGIN = 60
_ERRNO_REASONS = {
    errno.ECONNREFUSED: "connection refused",
    errno.EHOSTUNREACH: "host unreachable",
    errno.ENETUNREACH: "network unreachable",
    errno.ETIMEDOUT: "connection timed out",
}
_KEEPALIVE = {socket.TCP_KEEPIDLE: 10, socket.TCP_KEEPINTVL: 5, socket.TCP_KEEPCNT: 3}


class CeleryRunner:
    """Runs steps on devctl workers through Celery and Redis."""

    name = "distributed"

    def __init__(self, settings: Settings | None = None, resume: bool = False) -> None:
        self.settings = settings or Settings()
        self.resume = resume
        self._app: Celery | None = None
        self._client: aioredis.Redis | None = None
        self._listener: ReportListener | None = None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="devctl-celery")
        self.workers: list[str] = []

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
        self._app = create_app(self.settings)
        self.workers = await self._call(self._ping_workers)
        if not self.workers:
            raise BrokerUnavailableError(
                f"no devctl worker answered on {self.broker} within {self.settings.worker_ping_timeout:g}s: "
                "start one with 'devctl worker'"
            )
        self._listener = ReportListener(self._client, self.settings, lost_check=self._lost_messages)
        self._listener.on_expired = self._forget_remote
        await self._listener.start()

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

    async def run(self, spec: StepSpec) -> StepOutcome:
        """Send the step as a task and wait for its report; on cancellation kill it remotely first."""
        listener, client = self._require()
        future = await listener.expect(spec)
        try:
            if self.resume:
                reused = await self._previous_outcome(client, spec)
                if reused is not None:
                    return reused
            _raise_if_cancelling()
            await self._call(self._send, spec)
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            await asyncio.shield(self._cancel_remote(spec, future))
            raise
        finally:
            listener.forget(spec.task_id)

    async def _previous_outcome(self, client: aioredis.Redis, spec: StepSpec) -> StepOutcome | None:
        """With ``resume``: the same task id seen before (a resumed run) is not run twice.

        A reported success is reused; a task whose lease is live still runs somewhere and
        is adopted; anything else has its stale keys cleared and is sent again. (Workers
        remember revoked ids for hours: a resumed run should give unfinished steps a new attempt.)
        One round trip per step, so only when asked for.
        """
        pipe = client.pipeline(transaction=True)
        pipe.get(outcome_key(spec.task_id))
        pipe.exists(lease_key(spec.task_id))
        raw, leased = await pipe.execute()
        if raw is not None:
            outcome = decode_outcome(raw)
            if outcome.succeeded:
                return outcome
        if leased:
            return await self._adopt(spec)
        if raw is not None:
            await client.delete(outcome_key(spec.task_id), cancel_key(spec.task_id))
        return None

    async def _adopt(self, spec: StepSpec) -> StepOutcome:
        listener, _ = self._require()
        return await asyncio.shield(listener.pending[spec.task_id].future)

    def _send(self, spec: StepSpec) -> None:
        """Publish the task without subscribing to its result channel (ignore_result)."""
        assert self._app is not None
        time_limit = self.settings.hard_time_limit
        if spec.timeout is not None:  # a backstop: the worker's LocalRunner enforces spec.timeout itself
            time_limit = min(time_limit, int(spec.timeout + self.settings.kill_grace + TIME_LIMIT_MARGIN))
        self._app.send_task(
            TASK_NAME,
            args=[spec.run_id, spec.name, spec.to_dict()],
            task_id=spec.task_id,
            queue=spec.queue or self.settings.default_queue,
            ignore_result=True,
            time_limit=time_limit,
            argsrepr=flower_args(spec),
            kwargsrepr="{}",
        )

    async def _cancel_remote(self, spec: StepSpec, future: asyncio.Future[StepOutcome]) -> None:
        """Forbid, revoke with terminate, and wait (bounded) for the report that nothing is left."""
        try:
            started = await self._forbid(spec.task_id)
        except (RedisError, OSError) as exc:
            log.error("cannot cancel %s on %s: %s", spec.task_id, self.broker, type(exc).__name__)
            return
        if not started or future.done():
            return
        try:
            async with asyncio.timeout(self.settings.kill_grace + 2.0):
                await asyncio.shield(future)
        except TimeoutError:
            log.warning("no word from the worker that %s is dead after revoke", spec.task_id)
        except Exception as exc:  # the listener closed under us: nothing more to wait for
            log.warning("while cancelling %s: %s", spec.task_id, exc)

    async def _forbid(self, task_id: str) -> bool:
        """Set the cancel flag and revoke; True when the task had started (a lease or an outcome exists).

        The flag and the lease check are one MULTI, mirroring the worker's claim.
        """
        _, client = self._require()
        pipe = client.pipeline(transaction=True)
        pipe.set(cancel_key(task_id), "1", ex=self.settings.visibility_timeout + 3600)
        pipe.exists(lease_key(task_id))
        pipe.exists(outcome_key(task_id))
        _, leased, finished = await pipe.execute()
        await self._call(self._revoke, task_id)
        return bool(leased) and not finished

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
        if self._listener is not None:
            await self._listener.close()
            self._listener = None
        if self._client is not None:
            await _close_quietly(self._client)
            self._client = None
        if self._app is not None:
            app, self._app = self._app, None
            with contextlib.suppress(Exception):
                await asyncio.get_running_loop().run_in_executor(self._thread, app.close)
        self._thread.shutdown(wait=False)


def flower_args(spec: StepSpec) -> str:
    """What Flower shows as the task's arguments: run id, step name, the command (clipped).

    Never the step's ``env``, which may hold secrets; also cheaper than Celery's saferepr.
    """
    command = spec.command if len(spec.command) <= 200 else spec.command[:197] + "..."
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
