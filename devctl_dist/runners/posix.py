"""Starting a process the way a step needs it: ``posix_spawn`` (vfork + exec, as make does).

The same child either way: a new session, stdin ``/dev/null``, stdout and
stderr on pipes, default signal dispositions and an empty signal mask.
``spawn`` calls ``os.posix_spawn`` on the calling thread; ``CCall`` prepares
the same call to the C library through ctypes, which, unlike
``os.posix_spawn``, releases the GIL while the child starts (``spawn.py``
makes it on a spawning thread).
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import signal
import threading
from collections.abc import Mapping

from devctl_dist.runners.proctree import STEP_TOKEN_ENV

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
    out_r, out_w, err_r, err_w = pipes()
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


def with_token(env: Mapping[bytes, bytes], token: str | None) -> Mapping[bytes, bytes]:
    """``env`` plus the step's marker (what ``step_environment(overrides, token)`` gives)."""
    if token is None:
        return env
    return {**env, STEP_TOKEN_ENV.encode(): token.encode()}


class Libc:
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
        self._actions: dict[tuple[int, int], ctypes.Array[ctypes.c_char]] = {}
        for function in (libc.posix_spawn, libc.posix_spawnp):
            function.argtypes = (ctypes.POINTER(ctypes.c_int), ctypes.c_char_p, *[ctypes.c_void_p] * 4)
            function.restype = ctypes.c_int

    def actions(self, out_w: int, err_w: int) -> ctypes.Array[ctypes.c_char]:
        """File actions: stdin from /dev/null, stdout and stderr to these pipe ends.

        Built once per pair of descriptor numbers (the same few recur) and never
        changed: two spawns in flight never share a pair, descriptors being unique while open.
        """
        actions = self._actions.get((out_w, err_w))
        if actions is None:
            actions = ctypes.create_string_buffer(256)  # posix_spawn_file_actions_t: 80 bytes on x86-64
            c = self.libc
            if (
                c.posix_spawn_file_actions_init(actions)
                or c.posix_spawn_file_actions_addopen(actions, 0, b"/dev/null", os.O_RDONLY, 0)
                or c.posix_spawn_file_actions_adddup2(actions, out_w, 1)
                or c.posix_spawn_file_actions_adddup2(actions, err_w, 2)
            ):
                raise OSError(ctypes.get_errno(), "posix_spawn file actions failed")
            self._actions[out_w, err_w] = actions
        return actions


class CCall:
    """``_os_spawn`` as a prepared C call: pipes, argv, environment and file actions built in advance.

    ``token`` is the step's marker, added to ``env`` (``step_environment`` without it)
    at the end of the C array: the rest of the array is reused while the environment stays the same.
    """

    __slots__ = ("args", "fds", "function", "keep", "pid", "program")

    def __init__(
        self, argv: list[str], env: Mapping[bytes, bytes], executable: str | None, token: str | None = None
    ) -> None:
        loaded = c_library()
        assert loaded is not None
        words = [os.fsencode(word) for word in argv]
        path = os.fsencode(executable or argv[0])
        if b"\0" in path or any(b"\0" in word for word in words):
            raise ValueError("embedded null byte")
        argv_c = (ctypes.c_char_p * (len(words) + 1))(*words, None)
        env_c, self.keep = _env_array(env, None if token is None else f"{STEP_TOKEN_ENV}={token}".encode())
        self.program = executable or argv[0]
        self.pid = ctypes.c_int()
        self.fds = pipes()
        try:
            actions = loaded.actions(self.fds[1], self.fds[3])
        except BaseException:
            close_all(*self.fds)
            raise
        c = loaded.libc
        self.function = c.posix_spawnp if executable is None and "/" not in argv[0] else c.posix_spawn
        self.args = (ctypes.byref(self.pid), path, actions, loaded.attr, argv_c, env_c)

    def finish(self, code: int) -> Started:
        """After the call: close the child's pipe ends; raise the spawn's error, if any."""
        out_r, out_w, err_r, err_w = self.fds
        close_all(out_w, err_w)
        if code:
            close_all(out_r, err_r)
            raise OSError(code, os.strerror(code), self.program)
        return self.pid.value, out_r, err_r


class _EnvArray:
    """The C array of the last environment seen, with a free slot before the final NULL."""

    __slots__ = ("entries", "size", "source", "template")

    def __init__(self, env: Mapping[bytes, bytes]) -> None:
        self.source = dict(env)  # a copy: ``os.environ`` changes in place
        self.entries = [name + b"=" + value for name, value in env.items()]
        self.template = (ctypes.c_char_p * (len(self.entries) + 2))(*self.entries, None, None)
        self.size = ctypes.sizeof(self.template)


_last_env: list[_EnvArray] = []


def _env_array(
    env: Mapping[bytes, bytes], extra: bytes | None
) -> tuple[ctypes.Array[ctypes.c_char_p], object]:
    """``env`` (plus ``extra``) as a NULL-terminated C array, and what keeps its strings alive.

    Encoding 40-odd variables into a fresh array costs ~10 us a step; the
    environment rarely changes between steps, so the last array is copied
    (its pointers stay valid: the cache entry, returned too, holds the strings).
    """
    cached = _last_env[0] if _last_env else None
    if cached is None or cached.source != env:
        cached = _EnvArray(env)
        _last_env[:] = [cached]
    array = type(cached.template)()
    ctypes.memmove(array, cached.template, cached.size)
    if extra is not None:
        array[len(cached.entries)] = extra
    return array, (cached, extra)


def pipes() -> tuple[int, int, int, int]:
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


def _load_libc() -> Libc | None:
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
        return Libc()
    except (OSError, AttributeError):
        return None


_loaded: dict[str, Libc | None] = {}
_load_lock = threading.Lock()


def c_library() -> Libc | None:
    """The C library's spawn functions, loaded once; ``None`` without glibc >= 2.26."""
    if "libc" not in _loaded:
        with _load_lock:
            if "libc" not in _loaded:
                _loaded["libc"] = _load_libc()
    return _loaded["libc"]
