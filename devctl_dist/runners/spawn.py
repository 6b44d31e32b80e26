"""Starting a step's process: ``posix_spawn`` (vfork + exec, as make does), off the event loop's thread.

Why a thread: ``posix_spawn`` suspends its caller until the child has exec'd.
On a busy machine the child first waits for a CPU, and the caller waits with
it (about 400 us a step in a 10,000-step run, half of the loop's time), while
the loop could be reaping and reporting other steps. CPython's
``os.posix_spawn`` keeps the GIL through that wait, so the spawning threads
call the C library's ``posix_spawn``/``posix_spawnp`` through ctypes, which
releases it. Without glibc >= 2.26 (``POSIX_SPAWN_SETSID``) steps are spawned
on the loop's thread with ``os.posix_spawn``, as before; both give the child
the same session, descriptors, signal defaults and mask.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import queue
import signal
import threading
import weakref
from collections.abc import Mapping

from devctl_dist.runners.posix import (
    RESET_SIGNALS,
    CCall,
    Started,
    c_library,
    close_all,
    spawn,
    step_environment,
    with_token,
)

__all__ = [
    "RESET_SIGNALS",
    "SpawnJob",
    "Started",
    "close_all",
    "spawn",
    "step_environment",
    "submit",
    "with_token",
]

SPAWN_THREADS = 2  # two spawns may wait for a CPU at once; more only add GIL hand-offs


class SpawnJob:
    """One spawn for a spawning thread; ``future`` gets (pid, out fd, err fd) or the error.

    Everything is prepared on the loop's thread (pipes, C arrays, file
    actions) and finished there (closing the child's ends): the spawning
    thread only makes the call, so it needs the GIL as little as possible.
    """

    __slots__ = ("call", "code", "future", "inbox", "loop", "result", "settled", "waiters")

    def __init__(
        self, argv: list[str], env: Mapping[bytes, bytes], executable: str | None, token: str | None
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.future: asyncio.Future[Started] = self.loop.create_future()
        self.result: Started | None = None
        self.settled = False
        self.waiters: list[asyncio.Future[None]] = []
        self.code = 0
        self.call: CCall | None = None
        self.inbox: _Inbox | None = None
        try:
            self.call = CCall(argv, env, executable, token)
        except (OSError, ValueError) as error:
            self.settled = True
            self.future.set_exception(error)

    def run(self) -> None:
        """On a spawning thread: spawn (GIL released), then report on the loop."""
        assert self.call is not None and self.inbox is not None
        self.code = self.call.function(*self.call.args)
        self.inbox.post(self)

    async def wait_settled(self) -> None:
        """Until the spawn has returned (used after the step's wait for it was cancelled)."""
        if not self.settled:
            waiter = self.loop.create_future()
            self.waiters.append(waiter)
            await waiter

    def settle(self) -> None:
        """On the loop: the spawn returned; hand its result (or error) to the step."""
        assert self.call is not None
        self.settled = True
        try:
            self.result = self.call.finish(self.code)
        except OSError as error:
            if not self.future.cancelled():
                self.future.set_exception(error)
        else:
            if not self.future.cancelled():
                self.future.set_result(self.result)
        for waiter in self.waiters:
            if not waiter.done():
                waiter.set_result(None)

    def abandon(self) -> None:
        """The loop is gone: nobody will ever reap this child, so kill and reap it here."""
        assert self.call is not None
        with contextlib.suppress(OSError):
            pid, out_fd, err_fd = self.call.finish(self.code)
            close_all(out_fd, err_fd)
            os.killpg(pid, signal.SIGKILL)
            os.waitpid(pid, 0)


def submit(
    argv: list[str], env: Mapping[bytes, bytes], executable: str | None = None, token: str | None = None
) -> SpawnJob:
    """Spawn on a spawning thread when the C library allows it, else at once on this thread.

    ``env`` comes from ``step_environment`` without the step's marker ``token``, added here.
    """
    pool = _pool()
    if pool is None:
        return _done_at_once(argv, with_token(env, token), executable)
    job = SpawnJob(argv, env, executable, token)
    if not job.settled:
        job.inbox = _inbox(job.loop)
        pool.put(job)
    return job


class _Inbox:
    """Spawns finished for one event loop, and a wake-up for it that keeps the GIL.

    ``call_soon_threadsafe`` wakes the loop with a socket send that releases the
    GIL: one more hand-off between the spawning thread and the loop per step
    (measured: ~25 us of CPU a step). libc's ``write`` called through
    ``ctypes.PyDLL`` keeps the GIL.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = weakref.ref(loop)
        self.done: collections.deque[SpawnJob] = collections.deque()
        self.read_fd, self.write_fd = os.pipe()
        os.set_blocking(self.read_fd, False)
        os.set_blocking(self.write_fd, False)
        self.closed = False
        loop.add_reader(self.read_fd, self._drain)
        weakref.finalize(loop, self.close)

    def close(self) -> None:
        """Release the pipe (its loop is closed or gone); idempotent."""
        if not self.closed:
            self.closed = True
            close_all(self.read_fd, self.write_fd)

    def post(self, job: SpawnJob) -> None:
        """On a spawning thread: leave ``job`` and wake the loop (a full pipe: a wake-up is pending)."""
        loop = self.loop()
        if loop is None or loop.is_closed():
            job.abandon()
            return
        self.done.append(job)
        loaded = c_library()
        assert loaded is not None
        loaded.write(self.write_fd, b"\0", 1)

    def _drain(self) -> None:
        with contextlib.suppress(OSError):
            os.read(self.read_fd, 4096)
        while self.done:
            self.done.popleft().settle()


_inboxes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Inbox] = weakref.WeakKeyDictionary()


def _inbox(loop: asyncio.AbstractEventLoop) -> _Inbox:
    """The loop's inbox; a new one first releases those of closed loops (``asyncio.run`` per Celery task)."""
    inbox = _inboxes.get(loop)
    if inbox is None:
        with _lock:  # loops in several threads (a threaded Celery pool) may meet here
            for old_loop, old in list(_inboxes.items()):
                if old_loop.is_closed():
                    old.close()
                    del _inboxes[old_loop]
            inbox = _inboxes[loop] = _Inbox(loop)
    return inbox


def _done_at_once(argv: list[str], env: Mapping[bytes, bytes], executable: str | None) -> SpawnJob:
    """The fallback: ``os.posix_spawn`` on this thread, as a job that is already over."""
    job = SpawnJob.__new__(SpawnJob)
    job.loop = asyncio.get_running_loop()
    job.future = job.loop.create_future()
    job.call, job.inbox, job.code, job.result, job.settled, job.waiters = None, None, 0, None, True, []
    try:
        job.result = spawn(argv, env, executable)
        job.future.set_result(job.result)
    except (OSError, ValueError) as error:
        job.future.set_exception(error)
    return job


class _Pool:
    """Daemon threads that run spawn jobs (restarted lazily in a forked child)."""

    def __init__(self, size: int) -> None:
        self.jobs: queue.SimpleQueue[SpawnJob] = queue.SimpleQueue()
        for index in range(size):
            # cli_errors.IDLE_AT_EXIT: the quick exit after a run may drop these threads (idle by then)
            threading.Thread(target=self._work, name=f"devctl-spawn-{index}", daemon=True).start()

    def put(self, job: SpawnJob) -> None:
        self.jobs.put(job)

    def _work(self) -> None:
        while True:
            self.jobs.get().run()


_state: dict[str, _Pool | bool] = {}  # "pool", or "none" once the C library proved unusable
_lock = threading.Lock()


def _pool() -> _Pool | None:
    """The spawning threads, started on first use (ctypes is loaded only by a run that spawns)."""
    pool = _state.get("pool")
    if isinstance(pool, _Pool):
        return pool
    if "none" in _state:
        return None
    with _lock:
        if "pool" not in _state and "none" not in _state:
            if c_library() is None:
                _state["none"] = True
            else:
                _state["pool"] = _Pool(SPAWN_THREADS)
    return _pool()


def _after_fork_in_child() -> None:
    """A forked child (a Celery pool process) has none of the threads: start its own on first use."""
    global _lock
    _state.pop("pool", None)
    _inboxes.clear()
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)
