"""Admission: when a step that its group wants to start may actually start.

Every cap (the run's ``max_concurrent`` and each enclosing block's) is a
counter; a step holds all of its caps from its first attempt to its final
result, so a cancelled step keeps its slot until its process is gone. Waiting
steps are admitted strictly first-come first-served, skipping only those whose
own caps are full. Steps with the same caps form a lane (only a lane's head
can be admissible), so admission costs O(lanes), not O(waiting steps).

Decisions about *what* to start live in ``parallel.py``; this module only
says *when*, and it never admits on its own: the scheduler calls
``dispatch()`` after it has applied every consequence of an event, so a slot
freed by a failing step cannot go to a sibling the failure should stop.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import Callable

from devctl_dist.core.async_utils import RateLimiter


class Cap:
    """At most ``limit`` steps at once among those that carry this cap."""

    __slots__ = ("label", "limit", "used")

    def __init__(self, limit: int, label: str = "") -> None:
        if limit < 1:
            raise ValueError(f"a concurrency cap must be >= 1 (got {limit})")
        self.limit, self.used, self.label = limit, 0, label

    def __repr__(self) -> str:
        return f"Cap({self.label!r}, {self.used}/{self.limit})"


class Ticket:
    """One step's place in line; ``admitted`` turns true when its caps are taken."""

    __slots__ = ("admitted", "caps", "seq", "start", "timer")

    def __init__(self, seq: int, caps: tuple[Cap, ...], start: Callable[[], None]) -> None:
        self.seq, self.caps, self.start = seq, caps, start
        self.admitted = False
        self.timer: asyncio.TimerHandle | None = None


class Capacity:
    """The run-wide admission queue: caps, FIFO order, and the rate limit on starts."""

    def __init__(self, max_concurrent: int, rate_limit: float | None = None) -> None:
        self.slots = Cap(max_concurrent, "run")
        self.limiter = RateLimiter(rate_limit) if rate_limit else None
        self._lanes: dict[tuple[Cap, ...], deque[Ticket]] = {}
        self._seq = itertools.count()

    def request(self, caps: tuple[Cap, ...], start: Callable[[], None]) -> Ticket:
        """Queue a step; ``start`` is called once it is admitted (after ``dispatch``)."""
        chain = (*caps, self.slots)
        ticket = Ticket(next(self._seq), chain, start)
        self._lanes.setdefault(chain, deque()).append(ticket)
        return ticket

    def withdraw(self, ticket: Ticket) -> None:
        """Forget a step that will not run: out of line, or its pending start cancelled, caps returned."""
        if ticket.admitted:
            if ticket.timer is not None:
                ticket.timer.cancel()
            self.release(ticket)
            return
        lane = self._lanes.get(ticket.caps)
        if lane is not None:
            lane.remove(ticket)
            if not lane:
                del self._lanes[ticket.caps]

    def release(self, ticket: Ticket) -> None:
        """Return an admitted step's caps (its process is gone)."""
        if ticket.admitted:
            ticket.admitted = False
            for cap in ticket.caps:
                cap.used -= 1

    def dispatch(self) -> None:
        """Admit waiting steps in arrival order while their caps allow."""
        while self._lanes:
            best: deque[Ticket] | None = None
            for lane in self._lanes.values():
                head = lane[0]
                if all(cap.used < cap.limit for cap in head.caps) and (
                    best is None or head.seq < best[0].seq
                ):
                    best = lane
            if best is None:
                return
            ticket = best.popleft()
            if not best:
                del self._lanes[ticket.caps]
            self._admit(ticket)

    def _admit(self, ticket: Ticket) -> None:
        ticket.admitted = True
        for cap in ticket.caps:
            cap.used += 1
        delay = 0.0
        if self.limiter is not None:
            delay = self.limiter.reserve(asyncio.get_running_loop().time())
        if delay > 0:
            ticket.timer = asyncio.get_running_loop().call_later(delay, self._started, ticket)
        else:
            ticket.start()

    @staticmethod
    def _started(ticket: Ticket) -> None:
        ticket.timer = None
        ticket.start()

    async def next_start(self) -> None:
        """Wait for a rate-limit slot (a retry's next attempt)."""
        if self.limiter is not None:
            await self.limiter.acquire()
