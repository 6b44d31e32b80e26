"""Small asyncio helpers shared by the scheduler."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterable
from typing import TypeVar

T = TypeVar("T")


class RateLimiter:
    """At most ``rate`` acquisitions per second across every caller, evenly spaced.

    Each caller reserves the next free slot (``interval`` after the previous
    one) before sleeping, so concurrent callers never share a slot and the
    achieved rate converges on ``rate`` instead of bursting.
    """

    def __init__(self, rate: float) -> None:
        if rate <= 0:
            raise ValueError("rate must be > 0")
        self.rate = rate
        self.interval = 1.0 / rate
        self._next_slot = 0.0

    def reserve(self, now: float) -> float:
        """Take the next free slot; return how long to wait for it (0 when it is now)."""
        slot = max(now, self._next_slot)
        self._next_slot = slot + self.interval
        return slot - now

    async def acquire(self) -> None:
        delay = self.reserve(asyncio.get_running_loop().time())
        if delay > 0:
            await asyncio.sleep(delay)


async def gather_with_concurrency(limit: int, aws: Iterable[Awaitable[T]]) -> list[T]:
    """Await ``aws`` with at most ``limit`` running at once; results keep input order."""
    semaphore = asyncio.Semaphore(limit)

    async def guarded(aw: Awaitable[T]) -> T:
        async with semaphore:
            return await aw

    return list(await asyncio.gather(*(guarded(aw) for aw in aws)))
