"""Which queues have a live consumer: each worker registers itself in Redis, with a TTL.

``devctl:worker:{hostname}`` holds the queues a worker consumes; a thread in the
worker's main process renews it every ``REGISTRY_TTL / 3`` seconds and deletes it
at shutdown. The coordinator reads all of them in one SCAN + MGET, at start (a
step naming a queue nobody serves fails the run at once) and while steps wait in
a queue (a queue whose last worker left fails its waiting steps after
``queue_orphan_limit``). Cheaper and more current than Celery's broadcast inspect.
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
            self.client.delete(registry_key(self.hostname))

    def _loop(self) -> None:
        value = json.dumps({"queues": self.queues})
        while not self._stop.is_set():
            try:
                self.client.set(registry_key(self.hostname), value, ex=REGISTRY_TTL)
            except (redis.RedisError, OSError) as exc:  # the broker is away: try again next round
                log.warning("cannot register worker %s: %s", self.hostname, type(exc).__name__)
            self._stop.wait(REGISTRY_TTL / 3)


async def served_queues(client: aioredis.Redis) -> dict[str, list[str]]:
    """Queue -> live workers consuming it, from the registry."""
    keys = [key async for key in client.scan_iter(match=f"{REGISTRY_PREFIX}*", count=500)]
    if not keys:
        return {}
    served: dict[str, list[str]] = {}
    for key, raw in zip(keys, await client.mget(keys), strict=True):
        if raw is None:
            continue
        name = (key.decode() if isinstance(key, bytes) else str(key)).removeprefix(REGISTRY_PREFIX)
        try:
            queues = json.loads(raw).get("queues", [])
        except (ValueError, AttributeError):
            continue
        for queue in queues:
            served.setdefault(str(queue), []).append(name)
    return served


def unserved(required: list[str], served: dict[str, list[str]]) -> list[str]:
    """The queues of ``required`` that no live worker consumes, in order."""
    return [queue for queue in dict.fromkeys(required) if not served.get(queue)]
