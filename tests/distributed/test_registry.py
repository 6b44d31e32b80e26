"""The worker registry on the test Redis: found through its index, never by walking the DB."""

from __future__ import annotations

import asyncio
import time
import uuid

import redis
import redis.asyncio as aioredis

from devctl_dist.distributed.registry import REGISTRY_INDEX, WorkerRegistration, served_queues


def _served(url: str) -> dict[str, list[str]]:
    async def read() -> dict[str, list[str]]:
        client = aioredis.Redis.from_url(url)
        try:
            return await served_queues(client)
        finally:
            await client.aclose()

    return asyncio.run(read())


def test_a_registered_worker_serves_its_queues_until_it_stops(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    tag = uuid.uuid4().hex[:8]
    name, queue = f"reg-{tag}@host", f"q-{tag}"
    registration = WorkerRegistration(client, name, [queue, queue])
    registration.start()
    try:
        deadline = time.monotonic() + 5
        while not _served(redis_url).get(queue) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _served(redis_url)[queue] == [name]
    finally:
        registration.stop()
    assert queue not in _served(redis_url)
    assert name.encode() not in client.smembers(REGISTRY_INDEX)
    client.close()


def test_an_expired_entry_leaves_the_index(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    gone = f"gone-{uuid.uuid4().hex[:8]}@host"
    client.sadd(REGISTRY_INDEX, gone)  # its key expired with its worker
    assert all(gone not in names for names in _served(redis_url).values())
    assert gone.encode() not in client.smembers(REGISTRY_INDEX)
    client.close()
