"""Which queues have a live consumer: each worker registers itself in Redis, with a TTL.

``devctl:worker:{hostname}`` holds the queues a worker consumes; a thread in the
worker's main process renews it every ``REGISTRY_TTL / 3`` seconds and deletes it
at shutdown. Its name is also in the set ``devctl:workers``, so the coordinator
finds the entries with SMEMBERS + MGET (a SCAN would walk every key of the DB,
outcomes included: ~300 round trips at 150,000 keys), at start (a step naming a
queue nobody serves fails the run at once) and while steps wait in a queue (a
queue whose last worker left fails its waiting steps after ``queue_orphan_limit``).
An entry that expired is dropped from the set by the reader; a live worker puts
itself back at its next renewal. Cheaper and more current than Celery's broadcast inspect.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading

import redis
import redis.asyncio as aioredis

log = logging.getLogger(__name__)

REGISTRY_PREFIX = "devctl:worker:"
REGISTRY_INDEX = "devctl:workers"
REGISTRY_TTL = 15


def registry_key(hostname: str) -> str:
    return f"{REGISTRY_PREFIX}{hostname}"


class WorkerRegistration:
    """The worker side: a daemon thread keeping this worker's entry alive."""

    def __init__(self, client: redis.Redis, hostname: str, queues: list[str]) -> None:
        self.client = client
        self.hostname = hostname
        self.queues = sorted(set(queues))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="devctl-registry", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2.0)
        with contextlib.suppress(redis.RedisError, OSError):
            pipe = self.client.pipeline(transaction=False)
            pipe.delete(registry_key(self.hostname))
            pipe.srem(REGISTRY_INDEX, self.hostname)
            pipe.execute()

    def _loop(self) -> None:
        value = json.dumps({"queues": self.queues})
        while not self._stop.is_set():
            try:
                pipe = self.client.pipeline(transaction=False)
                pipe.set(registry_key(self.hostname), value, ex=REGISTRY_TTL)
                pipe.sadd(REGISTRY_INDEX, self.hostname)
                pipe.execute()
            except (redis.RedisError, OSError) as exc:  # the broker is away: try again next round
                log.warning("cannot register worker %s: %s", self.hostname, type(exc).__name__)
            self._stop.wait(REGISTRY_TTL / 3)


async def served_queues(client: aioredis.Redis) -> dict[str, list[str]]:
    """Queue -> live workers consuming it, from the registry."""
    names = sorted(_text(name) for name in await client.smembers(REGISTRY_INDEX))
    if names:
        keys = [registry_key(name) for name in names]
    else:  # workers of an older devctl register without the index
        keys = [_text(key) async for key in client.scan_iter(match=f"{REGISTRY_PREFIX}*", count=500)]
    if not keys:
        return {}
    served: dict[str, list[str]] = {}
    expired: list[str] = []
    for key, raw in zip(keys, await client.mget(keys), strict=True):
        name = key.removeprefix(REGISTRY_PREFIX)
        if raw is None:
            expired.append(name)
            continue
        try:
            queues = json.loads(raw).get("queues", [])
        except (ValueError, AttributeError):
            continue
        for queue in queues:
            served.setdefault(str(queue), []).append(name)
    if names and expired:
        await client.srem(REGISTRY_INDEX, *expired)
    return served


def unserved(required: list[str], served: dict[str, list[str]]) -> list[str]:
    """The queues of ``required`` that no live worker consumes, in order."""
    return [queue for queue in dict.fromkeys(required) if not served.get(queue)]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
