"""The coordinator's side of a run's generation and live marker (see ``state``).

Each coordinator of a run takes the next generation (``INCR``) and keeps
``devctl:run:{run_id}:live`` set to it with a short TTL. Workers start a task only
if its generation is the live one, so once a coordinator finishes (it deletes the
marker) or is gone (the marker expires within ``ttl``), nothing of its run starts
any more; a ``--resume`` takes over by raising the generation, and its task ids
differ from the earlier ones (``task_id_for``), so revokes and cancel flags of the
earlier coordinator never touch them.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from devctl_dist.distributed.state import generation_key, live_key
from devctl_dist.runners.base import StepSpec


def task_id_for(run_id: str, name: str, attempt: int, generation: int) -> str:
    """The Celery task id of one attempt: ``run:step:attempt``, plus ``~gN`` from generation 2 on."""
    base = f"{run_id}:{name}:{attempt}"
    return base if generation <= 1 else f"{base}~g{generation}"


def live_ttl(reconcile_interval: float) -> int:
    """How long the live marker outlives its coordinator's last renewal."""
    return max(15, int(3 * reconcile_interval) + 1)


class RunLiveness:
    """Generations of the runs this coordinator drives, and their live markers."""

    def __init__(self, client: aioredis.Redis, ttl: int, expires: int) -> None:
        self.client = client
        self.ttl = ttl
        self.expires = expires
        self.generations: dict[str, int] = {}
        self.renewed_at = time.monotonic()
        self._joining: dict[str, asyncio.Lock] = {}

    async def join(self, run_id: str) -> int:
        """This coordinator's generation of ``run_id`` (taken on first use, then made live).

        Once per run even when the scheduler starts several steps at once: concurrent
        first calls would each take a generation, and all but the last would be refused.
        """
        known = self.generations.get(run_id)
        if known is not None:
            return known
        lock = self._joining.setdefault(run_id, asyncio.Lock())
        async with lock:
            known = self.generations.get(run_id)
            if known is not None:
                return known
            return await self._take(run_id)

    async def _take(self, run_id: str) -> int:
        pipe = self.client.pipeline(transaction=True)
        pipe.incr(generation_key(run_id))
        pipe.expire(generation_key(run_id), self.expires)
        raw, _ = await pipe.execute()
        generation = int(raw)
        await self.client.set(live_key(run_id), generation, ex=self.ttl)
        self.generations[run_id] = generation  # known only once live: its tasks may start
        return generation

    def task_id(self, spec: StepSpec) -> str:
        return task_id_for(spec.run_id, spec.name, spec.attempt, self.generations.get(spec.run_id, 1))

    async def renew(self) -> None:
        """Keep each run live (also re-creates a marker a Redis restart lost)."""
        if not self.generations:
            self.renewed_at = time.monotonic()
            return
        pipe = self.client.pipeline(transaction=False)
        for run_id, generation in self.generations.items():
            pipe.set(live_key(run_id), generation, ex=self.ttl)
        await pipe.execute()
        self.renewed_at = time.monotonic()

    def surely_expired(self, margin: float = 2.0) -> bool:
        """True when no marker renewed by this coordinator can still be live in Redis."""
        return time.monotonic() - self.renewed_at > self.ttl + margin

    async def finish(self) -> None:
        """The run is over: delete the markers that are still ours; never raises."""
        for run_id, generation in self.generations.items():
            with contextlib.suppress(RedisError, OSError, ValueError):
                raw = await self.client.get(live_key(run_id))
                if raw is not None and int(raw) == generation:
                    await self.client.delete(live_key(run_id))
