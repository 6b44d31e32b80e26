"""One step's process tree: spawn it, capture bounded output, reap it, kill it.

Why not ``asyncio.create_subprocess_exec``: on Python 3.11 its default child
watcher starts a thread per child and its transports cost more than the step
itself for short commands. Here a step is ``posix_spawn``ed (``spawn.py``)
into a new session, its exit is a pidfd readable in the event loop,
and its pipes are read into bounded buffers: at exit for short steps, by
``add_reader`` callbacks for longer ones.

Process-group safety: a group is only signalled while its leader is unreaped
(alive or a zombie), so its pgid cannot have been reused by another process.

Cancellation (timeout, fail_all, Ctrl-C) kills the whole tree: the group, and
every process carrying the step's marker (``DEVCTL_STEP_TOKEN``), such as
``timeout`` or ``setsid`` children that left the group. A step that *ends on its
own* loses what is left in its group but keeps what it detached into a new
session on purpose (``setsid -f daemon``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable

from devctl_dist.runners.base import MAX_LINE
from devctl_dist.runners.proctree import STEP_TOKEN_ENV, group_exists, group_has_live_members, signal_marked
from devctl_dist.runners.spawn import close_all

READ_SIZE = 65536
TAIL_BYTES = 64 * 1024  # the end of a long output is kept too: it usually says why a step failed

# Pipes are watched only once a step has run this long: most short steps exit
# first and their output is read in one go at exit, saving four epoll
# registrations per step. A chattier step waits at most this long on a full pipe.
READER_DELAY = 0.01


class OutputCapture:
    """Keeps the first ``limit`` and the last ``TAIL_BYTES`` bytes of a stream; each line goes to ``on_line``.

    Memory stays bounded whatever a step prints; the full output is whatever
    ``on_line`` does with it (the run's log file). A line longer than
    ``MAX_LINE`` bytes is passed on in pieces.
    """

    __slots__ = ("data", "dropped", "limit", "on_line", "partial", "tail")

    def __init__(self, limit: int, on_line: Callable[[str], None] | None = None) -> None:
        self.limit = max(0, limit)
        self.data = bytearray()
        self.tail = bytearray()
        self.dropped = 0
        self.on_line = on_line
        self.partial = b""

    def feed(self, chunk: bytes) -> None:
        if self.on_line is not None:
            self._split(chunk)
        room = self.limit - len(self.data)
        if room >= len(chunk):
            self.data += chunk
            return
        if room > 0:
            self.data += chunk[:room]
            chunk = chunk[room:]
        self.dropped += len(chunk)
        self.tail += chunk
        if len(self.tail) > TAIL_BYTES:
            del self.tail[: len(self.tail) - TAIL_BYTES]

    def _split(self, chunk: bytes) -> None:
        assert self.on_line is not None
        lines = (self.partial + chunk).split(b"\n")
        self.partial = lines.pop()
        for line in lines:
            self.on_line(line.decode("utf-8", errors="replace"))
        while len(self.partial) > MAX_LINE:
            piece, self.partial = self.partial[:MAX_LINE], self.partial[MAX_LINE:]
            self.on_line(piece.decode("utf-8", errors="replace"))

    def end(self) -> None:
        """The stream closed: pass on a last line without a newline."""
        if self.on_line is not None and self.partial:
            self.on_line(self.partial.decode("utf-8", errors="replace"))
        self.partial = b""

    def text(self) -> str:
        text = self.data.decode("utf-8", errors="replace")
        if self.dropped:
            hidden = self.dropped - len(self.tail)
            tail = self.tail.decode("utf-8", errors="replace")
            if hidden > 0:
                whole_lines = tail.partition("\n")[2] if "\n" in tail else tail
                text += f"\n[... {hidden} bytes truncated]\n" + whole_lines
            else:
                text += tail
        return text


class StepProcess:
    """A spawned step (session leader, so pid == pgid) driven by loop callbacks.

    ``wait()`` returns once the leader has exited and both pipes are closed.
    When the leader exits, whatever is left in its group is SIGKILLed (a
    backgrounded grandchild must neither survive nor hold the pipes open);
    pipes still open ``drain_timeout`` seconds later (held by a process that
    left the group) are closed.
    """

    def __init__(
        self,
        pid: int,
        out_fd: int,
        err_fd: int,
        output_limit: int,
        drain_timeout: float,
        token: str | None = None,
        on_line: Callable[[str, str], None] | None = None,
    ) -> None:
        self.pid = pid
        self.token = token
        self.cancelled = False
        self.returncode: int | None = None
        self.exited = False
        self.error: str | None = None
        self.survivors = False
        self.timed_out = False
        self.ended_at = 0.0
        self.stdout = OutputCapture(output_limit, _bind(on_line, "stdout"))
        self.stderr = OutputCapture(output_limit, _bind(on_line, "stderr"))
        self._loop = asyncio.get_running_loop()
        self._drain_timeout = drain_timeout
        self._streams: dict[int, OutputCapture] = {out_fd: self.stdout, err_fd: self.stderr}
        self._waiter: asyncio.Future[None] | None = None
        self._kill_timer: asyncio.TimerHandle | None = None
        self._drain_timer: asyncio.TimerHandle | None = None
        self._pidfd: int | None = None
        self._readers_on = False
        self._reader_timer: asyncio.TimerHandle | None = self._loop.call_later(
            READER_DELAY, self._start_readers
        )
        self._watch_exit()

    @property
    def finished(self) -> bool:
        return self.exited and not self._streams

    async def wait(self) -> None:
        """Until the leader is reaped and output is drained (cancellable, no side effect)."""
        if self.finished:
            return
        if self._waiter is None or self._waiter.done():
            self._waiter = self._loop.create_future()
        await self._waiter

    def signal_group(self, sig: int) -> None:
        """Send ``sig`` to the whole group while its pgid is still ours."""
        if self.exited:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)

    def signal_tree(self, sig: int) -> None:
        """Send ``sig`` to the group and to every process carrying the step's marker."""
        self.signal_group(sig)
        if self.token is not None:
            signal_marked(STEP_TOKEN_ENV, self.token, sig)

    def terminate(self, grace: float) -> None:
        """Cancel: SIGTERM the whole tree now and SIGKILL it ``grace`` seconds later if still there."""
        self.cancelled = True
        if grace <= 0:
            self.signal_tree(signal.SIGKILL)
            return
        self.signal_tree(signal.SIGTERM)
        if self._kill_timer is None and not self.exited:
            self._kill_timer = self._loop.call_later(grace, self.signal_tree, signal.SIGKILL)

    def expire(self, grace: float) -> None:
        """The step's timeout fired: record it and terminate the group."""
        if not self.exited:
            self.timed_out = True
            self.terminate(grace)

    def kill_now(self) -> None:
        """Synchronous last resort: SIGKILL the tree and reap the leader, blocking."""
        self.cancelled = True
        self.signal_tree(signal.SIGKILL)
        self._on_exit()

    async def wait_group_gone(self, timeout: float) -> None:
        """After a kill, wait (bounded) until no live process is left in the group (or tree, if cancelled)."""
        deadline = time.monotonic() + timeout
        while group_has_live_members(self.pid) and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        while self._marked_left() and time.monotonic() < deadline:
            await asyncio.sleep(0.02)

    def _marked_left(self) -> bool:
        """A cancelled step's marked processes still alive (SIGKILLed again: they had their grace)."""
        if not self.cancelled or self.token is None:
            return False
        return bool(signal_marked(STEP_TOKEN_ENV, self.token, signal.SIGKILL))

    def close(self) -> None:
        """Release everything; reaps the leader (SIGKILL) if that has not happened."""
        if not self.exited:
            self.kill_now()
        for fd in list(self._streams):
            self._close_stream(fd)
        for timer in (self._kill_timer, self._drain_timer, self._reader_timer):
            if timer is not None:
                timer.cancel()

    def _watch_exit(self) -> None:
        try:
            self._pidfd = os.pidfd_open(self.pid)
            self._loop.add_reader(self._pidfd, self._on_exit)
        except (AttributeError, OSError, NotImplementedError):
            if self._pidfd is not None:
                close_all(self._pidfd)
                self._pidfd = None
            threading.Thread(target=self._wait_in_thread, name=f"devctl-wait-{self.pid}", daemon=True).start()

    def _wait_in_thread(self) -> None:
        """Fallback without pidfd: wait without reaping, then reap on the loop."""
        with contextlib.suppress(ChildProcessError):
            os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOWAIT)
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._on_exit)

    def _on_exit(self) -> None:
        if self.exited:
            return
        if self._pidfd is not None:
            self._loop.remove_reader(self._pidfd)
            close_all(self._pidfd)
            self._pidfd = None
        self.ended_at = time.time()
        self.signal_group(signal.SIGKILL)  # the leader is at least a zombie: pgid still ours
        if self.cancelled and self.token is not None:
            signal_marked(STEP_TOKEN_ENV, self.token, signal.SIGKILL)  # escapees from the group
        self.exited = True  # before reaping: from now on the pgid may be reused
        self._reap()
        if self._kill_timer is not None:
            self._kill_timer.cancel()
        self.survivors = group_exists(self.pid)
        self._read_available()
        if self._streams:
            self._start_readers()
            self._drain_timer = self._loop.call_later(self._drain_timeout, self._close_streams)
        self._check_finished()

    def _reap(self) -> None:
        try:
            _, status = os.waitpid(self.pid, 0)
        except ChildProcessError:
            self.error = "exit status lost: the process was reaped by someone else"
            return
        self.returncode = os.waitstatus_to_exitcode(status)

    def _start_readers(self) -> None:
        if self._reader_timer is not None:
            self._reader_timer.cancel()
            self._reader_timer = None
        if not self._readers_on:
            self._readers_on = True
            for fd, capture in self._streams.items():
                self._loop.add_reader(fd, self._on_readable, fd, capture)

    def _read_available(self, max_reads: int = 16) -> None:
        """Read what the pipes hold now (bounded: a writer outside the group may go on)."""
        for fd, capture in list(self._streams.items()):
            for _ in range(max_reads):
                try:
                    chunk = os.read(fd, READ_SIZE)
                except BlockingIOError:
                    break
                except OSError:
                    chunk = b""
                if not chunk:
                    self._close_stream(fd)
                    break
                capture.feed(chunk)

    def _on_readable(self, fd: int, capture: OutputCapture) -> None:
        try:
            chunk = os.read(fd, READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if chunk:
            capture.feed(chunk)
        else:
            self._close_stream(fd)
            self._check_finished()

    def _close_stream(self, fd: int) -> None:
        capture = self._streams.pop(fd, None)
        if capture is not None:
            capture.end()
            if self._readers_on:
                self._loop.remove_reader(fd)
            close_all(fd)

    def _close_streams(self) -> None:
        for fd in list(self._streams):
            self._close_stream(fd)
        self._check_finished()

    def _check_finished(self) -> None:
        if not self.finished:
            return
        if self._drain_timer is not None:
            self._drain_timer.cancel()
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


def _bind(on_line: Callable[[str, str], None] | None, stream: str) -> Callable[[str], None] | None:
    if on_line is None:
        return None
    return lambda line: on_line(stream, line)


def ensure_child_status() -> None:
    """Undo an ignored SIGCHLD: the kernel would then reap steps itself and lose their exit codes.

    Only the main thread may change a disposition; elsewhere a lost status is
    reported as the step's error.
    """
    if (
        signal.getsignal(signal.SIGCHLD) == signal.SIG_IGN
        and threading.current_thread() is threading.main_thread()
    ):
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
