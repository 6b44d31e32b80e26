"""Process helpers for bench_e2e.py: time a command, time it on a terminal, start the workers."""

from __future__ import annotations

import os
import pty
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

BENCH = Path(__file__).resolve().parent


def devctl_cmd() -> list[str]:
    """The installed ``devctl`` console script, next to this interpreter."""
    return [str(Path(sys.executable).parent / "devctl")]


def run_timed(cmd: list[str], env: dict[str, str]) -> float:
    """Wall time of ``cmd`` with its stdout to a pipe that is drained (like ``| cat``)."""
    started = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, check=False)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr.decode()[-500:]}")
    return elapsed


def run_timed_tty(cmd: list[str], env: dict[str, str]) -> float:
    """Wall time of ``cmd`` writing to a pseudo-terminal (the live table), drained by a thread."""
    master, slave = pty.openpty()
    drained = threading.Thread(target=_drain, args=(master,), daemon=True)
    drained.start()
    started = time.perf_counter()
    try:
        proc = subprocess.run(cmd, env={**env, "COLUMNS": "120"}, stdout=slave, stderr=subprocess.PIPE)
    finally:
        elapsed = time.perf_counter() - started
        os.close(slave)
        drained.join(5)
        os.close(master)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr.decode()[-500:]}")
    return elapsed


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 65536):
            pass
    except OSError:  # EIO once the slave side is closed
        pass


@contextmanager
def workers(concurrency: int = 2) -> Iterator[tuple[str, dict[str, str]]]:
    """One ``devctl worker`` and two plain Celery workers, each ``concurrency`` processes, own queues.

    Yields the devctl queue (the plain ones are ``QUEUE-plain`` and, with devctl's required
    settings, ``QUEUE-like``) and the environment
    that points ``devctl`` and plain_celery.py at the bench Redis.
    """
    url = os.environ.get("DEVCTL_BENCH_REDIS_URL", "redis://127.0.0.1:6379/6")
    queue = f"e2e-{uuid.uuid4().hex[:6]}"
    env = {**os.environ, "DEVCTL_BROKER_URL": url, "DEVCTL_DEFAULT_QUEUE": queue, "PLAIN_CELERY_URL": url}
    celery = str(Path(sys.executable).parent / "celery")
    devctl = subprocess.Popen(
        [str(Path(sys.executable).parent / "devctl"), "worker", "-c", str(concurrency), "-l", "warning"],
        env=env,
    )
    plain = _plain_worker(celery, concurrency, f"{queue}-plain", env)
    like = _plain_worker(celery, concurrency, f"{queue}-like", {**env, "PLAIN_CELERY_LIKE_DEVCTL": "1"})
    try:
        _wait_ready(env, [devctl, plain, like])
        yield queue, {k: env[k] for k in ("DEVCTL_BROKER_URL", "DEVCTL_DEFAULT_QUEUE", "PLAIN_CELERY_URL")}
    finally:
        for proc in (devctl, plain, like):
            proc.send_signal(signal.SIGTERM)  # warm shutdown of the main process only
        for proc in (devctl, plain, like):
            proc.wait(60)


def _plain_worker(celery: str, concurrency: int, queue: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """A plain Celery worker (bench/plain_celery.py) named after its queue."""
    command = [celery, "-A", "plain_celery", "worker", "-c", str(concurrency), "-Q", queue]
    command += ["-l", "warning", "-n", f"{queue}@%h"]
    return subprocess.Popen(command, env=env, cwd=BENCH)


def _wait_ready(env: dict[str, str], procs: list[subprocess.Popen[bytes]]) -> None:
    """Until every worker answers a ping (a short warm-up run follows in the first timed repeat)."""
    sys.path.insert(0, str(BENCH))
    os.environ["PLAIN_CELERY_URL"] = env["PLAIN_CELERY_URL"]
    from plain_celery import app

    deadline = time.monotonic() + 60
    queue = env["DEVCTL_DEFAULT_QUEUE"]
    names = {f"devctl-{procs[0].pid}", f"{queue}-plain", f"{queue}-like"}
    while time.monotonic() < deadline:
        if any(proc.poll() is not None for proc in procs):
            raise RuntimeError("a bench worker exited at start")
        replies = app.control.ping(timeout=1.0)
        seen = {name.split("@")[0] for reply in replies for name in reply}
        if names <= seen:
            return
    raise RuntimeError("bench workers did not answer within 60 s")
