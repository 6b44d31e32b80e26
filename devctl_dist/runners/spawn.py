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
import ctypes
import fcntl
import os
import queue
import signal
import threading
import weakref
from collections.abc import Mapping

from devctl_dist.runners.proctree import STEP_TOKEN_ENV

SPAWN_THREADS = 2  # two spawns may wait for a CPU at once; more only add GIL hand-offs

# Python ignores SIGPIPE and SIGXFSZ, and a Celery pool child may ignore more:
# ignored dispositions survive exec, so each step starts with the defaults.
RESET_SIGNALS = (
    signal.SIGPIPE,
    signal.SIGXFSZ,
    signal.SIGINT,
    signal.SIGQUIT,
    signal.SIGTERM,
    signal.SIGHUP,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGALRM,
    signal.SIGCHLD,
    signal.SIGTSTP,
    signal.SIGTTIN,
    signal.SIGTTOU,
)

Started = tuple[int, int, int]  # pid, stdout read fd, stderr read fd


def spawn(argv: list[str], env: Mapping[bytes, bytes], executable: str | None = None) -> Started:
    """Start ``argv`` in a new session with stdin /dev/null and piped stdout/stderr, on this thread.

    Returns (pid, stdout read fd, stderr read fd). Without ``executable`` a
    bare program name is searched on this process's PATH. Raises ``OSError``
    (``FileNotFoundError``, ``PermissionError`` ...) when the program cannot
    be started; no descriptor leaks then.
    """
    out_r, out_w, err_r, err_w = _pipes()
    try:
        pid = _os_spawn(argv, env, executable, out_w, err_w)
    except BaseException:
        close_all(out_r, out_w, err_r, err_w)
        raise
    close_all(out_w, err_w)
    return pid, out_r, err_r


def _os_spawn(
    argv: list[str], env: Mapping[bytes, bytes], executable: str | None, out_w: int, err_w: int
) -> int:
    actions = [
        (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
        (os.POSIX_SPAWN_DUP2, out_w, 1),
        (os.POSIX_SPAWN_DUP2, err_w, 2),
    ]
    if executable is None and "/" not in argv[0]:
        return os.posix_spawnp(
            argv[0], argv, env, file_actions=actions, setsid=True, setsigdef=RESET_SIGNALS, setsigmask=()
        )
    return os.posix_spawn(
        executable or argv[0],
        argv,
        env,
        file_actions=actions,
        setsid=True,
        setsigdef=RESET_SIGNALS,
        setsigmask=(),
    )


def close_all(*fds: int) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def step_environment(overrides: Mapping[str, str], token: str | None = None) -> Mapping[bytes, bytes]:
    """``os.environ`` merged with ``overrides`` (and the step's marker), as the bytes mapping exec needs.

    Iterating ``os.environ`` decodes every entry in Python (about 50 us per
    step); its underlying bytes dict is read at C speed when available.
    Raises ``ValueError`` for a name exec cannot carry (empty, ``=``, NUL) or a NUL in a value.
    """
    base: Mapping[bytes, bytes] = getattr(os.environ, "_data", None) or os.environb
    if not overrides and token is None:
        return base
    merged = dict(base)
    for key, value in overrides.items():
        name = os.fsencode(key)
        if not name or b"=" in name or b"\0" in name:
            raise ValueError(f"invalid environment variable name {key!r}")
        if "\0" in value:
            raise ValueError(f"environment variable {key!r} contains a NUL character")
        merged[name] = os.fsencode(value)
    if token is not None:
        merged[STEP_TOKEN_ENV.encode()] = token.encode()
    return merged


# ---------------------------------------------------------------- off the loop's thread


class SpawnJob:
    """One spawn for a spawning thread; ``future`` gets (pid, out fd, err fd) or the error.

    Everything is prepared on the loop's thread (pipes, C arrays, file
    actions) and finished there (closing the child's ends): the spawning
    thread only makes the call, so it needs the GIL as little as possible.
    """

    __slots__ = ("call", "code", "future", "inbox", "loop", "result", "settled", "waiters")

    def __init__(self, argv: list[str], env: Mapping[bytes, bytes], executable: str | None) -> None:
        self.loop = asyncio.get_running_loop()
        self.future: asyncio.Future[Started] = self.loop.create_future()
        self.result: Started | None = None
        self.settled = False
        self.waiters: list[asyncio.Future[None]] = []
        self.code = 0
        self.call: _CCall | None = None
        self.inbox: _Inbox | None = None
        try:
            self.call = _CCall(argv, env, executable)
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


def submit(argv: list[str], env: Mapping[bytes, bytes], executable: str | None = None) -> SpawnJob:
    """Spawn on a spawning thread when the C library allows it, else at once on this thread."""
    pool = _pool()
    if pool is None:
        return _done_at_once(argv, env, executable)
    job = SpawnJob(argv, env, executable)
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
        assert _libc is not None
        _libc.write(self.write_fd, b"\0", 1)

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


class _Libc:
    """The C library's spawn functions and a shared attribute set (session, signal defaults, empty mask)."""

    SETSIGDEF, SETSIGMASK, SETSID = 0x04, 0x08, 0x80  # <spawn.h>, glibc (and musl)

    def __init__(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self.libc = libc
        self.attr = ctypes.create_string_buffer(1024)  # posix_spawnattr_t is 336 bytes on x86-64
        self.sigdef = ctypes.create_string_buffer(256)
        self.mask = ctypes.create_string_buffer(256)
        if libc.posix_spawnattr_init(self.attr) or libc.sigemptyset(self.sigdef) + libc.sigemptyset(
            self.mask
        ):
            raise OSError("posix_spawnattr_init failed")
        for signum in RESET_SIGNALS:
            libc.sigaddset(self.sigdef, int(signum))
        flags = ctypes.c_short(self.SETSIGDEF | self.SETSIGMASK | self.SETSID)
        if (
            libc.posix_spawnattr_setsigdefault(self.attr, self.sigdef)
            or libc.posix_spawnattr_setsigmask(self.attr, self.mask)
            or libc.posix_spawnattr_setflags(self.attr, flags)
        ):
            raise OSError("posix_spawnattr_setflags failed")
        self.write = ctypes.PyDLL(None).write  # keeps the GIL: a one-byte write to a pipe never blocks long
        self.write.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t)
        self.write.restype = ctypes.c_ssize_t
        for function in (libc.posix_spawn, libc.posix_spawnp):
            function.argtypes = (ctypes.POINTER(ctypes.c_int), ctypes.c_char_p, *[ctypes.c_void_p] * 4)
            function.restype = ctypes.c_int


class _CCall:
    """``_os_spawn`` as a prepared C call: pipes, argv, environment and file actions built in advance."""

    __slots__ = ("actions", "args", "fds", "function", "pid", "program")

    def __init__(self, argv: list[str], env: Mapping[bytes, bytes], executable: str | None) -> None:
        assert _libc is not None
        libc = _libc.libc
        words = [os.fsencode(word) for word in argv]
        path = os.fsencode(executable or argv[0])
        if b"\0" in path or any(b"\0" in word for word in words):
            raise ValueError("embedded null byte")
        entries = [name + b"=" + value for name, value in env.items()]
        argv_c = (ctypes.c_char_p * (len(words) + 1))(*words, None)
        env_c = (ctypes.c_char_p * (len(entries) + 1))(*entries, None)
        self.program = executable or argv[0]
        self.pid = ctypes.c_int()
        self.actions = ctypes.create_string_buffer(256)  # posix_spawn_file_actions_t: 80 bytes on x86-64
        if libc.posix_spawn_file_actions_init(self.actions):
            raise OSError(ctypes.get_errno(), "posix_spawn_file_actions_init failed")
        try:
            self.fds = _pipes()
            out_w, err_w = self.fds[1], self.fds[3]
            if (
                libc.posix_spawn_file_actions_addopen(self.actions, 0, b"/dev/null", os.O_RDONLY, 0)
                or libc.posix_spawn_file_actions_adddup2(self.actions, out_w, 1)
                or libc.posix_spawn_file_actions_adddup2(self.actions, err_w, 2)
            ):
                close_all(*self.fds)
                raise OSError(ctypes.get_errno(), "posix_spawn file actions failed")
        except BaseException:
            libc.posix_spawn_file_actions_destroy(self.actions)
            raise
        self.function = libc.posix_spawnp if executable is None and "/" not in argv[0] else libc.posix_spawn
        self.args = (ctypes.byref(self.pid), path, self.actions, _libc.attr, argv_c, env_c)

    def finish(self, code: int) -> Started:
        """After the call: close the child's pipe ends; raise the spawn's error, if any."""
        assert _libc is not None
        _libc.libc.posix_spawn_file_actions_destroy(self.actions)
        out_r, out_w, err_r, err_w = self.fds
        close_all(out_w, err_w)
        if code:
            close_all(out_r, err_r)
            raise OSError(code, os.strerror(code), self.program)
        return self.pid.value, out_r, err_r


def _pipes() -> tuple[int, int, int, int]:
    """Two pipes (stdout, stderr), the read ends non-blocking; nothing leaks on failure."""
    out_r, out_w = os.pipe()
    try:
        err_r, err_w = os.pipe()
    except OSError:
        close_all(out_r, out_w)
        raise
    fcntl.fcntl(out_r, fcntl.F_SETFL, os.O_NONBLOCK)  # a fresh pipe end has no other status flag
    fcntl.fcntl(err_r, fcntl.F_SETFL, os.O_NONBLOCK)
    return out_r, out_w, err_r, err_w


def _load_libc() -> _Libc | None:
    version = ""
    with contextlib.suppress(ValueError, OSError):
        version = os.confstr("CS_GNU_LIBC_VERSION") or ""
    name, _, number = version.partition(" ")
    try:
        major, minor = (int(part) for part in number.split(".")[:2])
    except ValueError:
        return None
    if name != "glibc" or (major, minor) < (2, 26):
        return None
    try:
        return _Libc()
    except (OSError, AttributeError):
        return None


class _Pool:
    """Daemon threads that run spawn jobs (restarted lazily in a forked child)."""

    def __init__(self, size: int) -> None:
        self.jobs: queue.SimpleQueue[SpawnJob] = queue.SimpleQueue()
        for index in range(size):
            threading.Thread(target=self._work, name=f"devctl-spawn-{index}", daemon=True).start()

    def put(self, job: SpawnJob) -> None:
        self.jobs.put(job)

    def _work(self) -> None:
        while True:
            self.jobs.get().run()


_libc: _Libc | None = None
_state: dict[str, _Pool | bool] = {}  # "pool", or "none" once the C library proved unusable
_lock = threading.Lock()


def _pool() -> _Pool | None:
    """The spawning threads, started on first use (ctypes is loaded only by a run that spawns)."""
    pool = _state.get("pool")
    if isinstance(pool, _Pool):
        return pool
    if "none" in _state:
        return None
    global _libc
    with _lock:
        if "pool" not in _state and "none" not in _state:
            _libc = _load_libc()
            if _libc is None:
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
