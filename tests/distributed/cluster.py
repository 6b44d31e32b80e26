"""A real Redis and real ``celery worker`` subprocesses for the distributed tests.

Fixtures (re-exported by ``tests/conftest.py``, so every test directory sees them):

- ``redis_url`` (session): a Redis DB for this session. ``DEVCTL_TEST_REDIS_URL``, else
  127.0.0.1:6379 DB 5 if it answers, else a ``redis-server`` on a free loopback port
  (stopped at teardown), else skip with one loud reason; under ``CI=true``, fail instead.
- ``distributed_env`` (session): the ``DEVCTL_*`` variables of the test cluster, for
  subprocesses (``devctl run --distributed``, workers). Queue names are unique per
  session, so concurrent sessions sharing the DB never steal each other's tasks.
- ``worker_factory`` (session): ``worker_factory(queues, concurrency, label)`` starts a
  worker (prefork), waits until it answers a ping, stops it at session end
  (SIGTERM, then SIGKILL) and checks that none of its processes is left.
- ``two_workers`` (session): two workers on the default queue, concurrency 4 each.
- ``distributed_runner_factory`` (function): a zero-argument callable returning a fresh
  ``CeleryRunner`` for the test cluster (needs ``two_workers``, started on first use).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis

from devctl_dist.distributed.runner import CeleryRunner
from devctl_dist.settings import Settings
from tests.evidence import wait_gone

TEST_DB = 5
SESSION = uuid.uuid4().hex[:8]
DEFAULT_QUEUE = f"t{SESSION}-default"
SPECIAL_QUEUE = f"t{SESSION}-special"
# Short enough for tests, long enough for a loaded 2-core machine.
TEST_SETTINGS: dict[str, str] = {
    "DEVCTL_DEFAULT_QUEUE": DEFAULT_QUEUE,
    "DEVCTL_KILL_GRACE": "1.0",
    "DEVCTL_WORKER_PING_TIMEOUT": "5",
    "DEVCTL_LEASE_SECONDS": "6",
    "DEVCTL_RECONCILE_INTERVAL": "2",
    "DEVCTL_REPORT_GRACE": "5",
}


def _answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=2).ping())
    except (redis.RedisError, OSError):
        return False


def _unavailable(reason: str) -> None:
    message = f"DISTRIBUTED TESTS NOT RUN: {reason}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message + " (CI=true: distributed tests must run)", pytrace=False)
    pytest.skip(message)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class RedisServer:
    """A ``redis-server`` this session started (no persistence, loopback only)."""

    port: int
    process: subprocess.Popen[bytes]

    @classmethod
    def start(cls, binary: str, port: int | None = None) -> RedisServer:
        port = port or _free_port()
        args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        server = cls(port, process)
        deadline = time.monotonic() + 10
        while not _answers(server.url(0)):
            if process.poll() is not None or time.monotonic() > deadline:
                server.stop()
                raise RuntimeError(f"redis-server on port {port} did not start")
            time.sleep(0.05)
        return server

    def crash_and_restart(self, binary: str, down: float = 1.0) -> None:
        """SIGKILL the server (no persistence: everything is lost), wait ``down`` s, start it again."""
        self.process.kill()
        self.process.wait()
        time.sleep(down)
        self.process = RedisServer.start(binary, self.port).process

    def url(self, db: int) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _claim_db(url: str) -> Callable[[], None]:
    """Flush the test DB unless another live session uses it; return the release function."""
    client = redis.Redis.from_url(url)
    key = f"devctl-test:session:{SESSION}"
    others = [k for k in client.scan_iter("devctl-test:session:*") if k.decode() != key]
    if not others:
        client.flushdb()
    client.set(key, str(os.getpid()), ex=3600)

    def release() -> None:
        client.delete(key)
        client.close()

    return release


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A Redis DB for this test session (see the module docstring for how it is found)."""
    server: RedisServer | None = None
    url = os.environ.get("DEVCTL_TEST_REDIS_URL")
    if url:
        if not _answers(url):
            _unavailable("DEVCTL_TEST_REDIS_URL does not answer a PING")
    elif _answers(f"redis://127.0.0.1:6379/{TEST_DB}"):
        url = f"redis://127.0.0.1:6379/{TEST_DB}"
    elif (binary := shutil.which("redis-server")) is not None:
        server = RedisServer.start(binary)
        url = server.url(TEST_DB)
    else:
        _unavailable("no Redis on 127.0.0.1:6379, no redis-server binary, DEVCTL_TEST_REDIS_URL unset")
    assert url is not None
    release = _claim_db(url)
    yield url
    release()
    if server is not None:
        server.stop()


@pytest.fixture(scope="session")
def distributed_env(redis_url: str) -> dict[str, str]:
    """``DEVCTL_*`` variables pointing at the test cluster (merge into a subprocess's env)."""
    return {"DEVCTL_BROKER_URL": redis_url, **TEST_SETTINGS}


def cluster_settings(redis_url: str, **overrides: Any) -> Settings:
    """The settings the test workers run with, for a coordinator in this process."""
    values: dict[str, Any] = {k.removeprefix("DEVCTL_").lower(): v for k, v in TEST_SETTINGS.items()}
    values["broker_url"] = redis_url
    values.update(overrides)
    return Settings(**values)


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


@dataclass
class WorkerProcess:
    """One ``devctl`` worker (main process + prefork pool) started for the tests."""

    name: str
    queues: list[str]
    process: subprocess.Popen[bytes]
    log: Path
    pool: list[int] = field(default_factory=list)
    seen: list[int] = field(default_factory=list)

    def wait_ready(self, settings: Settings, timeout: float = 60.0) -> None:
        from devctl_dist.distributed.app import create_app

        app = create_app(settings)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"worker {self.name} exited: {self.log.read_text()[-2000:]}")
                if app.control.ping(destination=[self.name], timeout=1.0):
                    self.pool = _children(self.process.pid)
                    return
        finally:
            app.close()
        raise RuntimeError(f"worker {self.name} did not answer a ping in {timeout:g}s")

    def terminate(self) -> list[int]:
        """Ask for a warm shutdown (SIGTERM); return every pid of this worker to check later."""
        pids = sorted({self.process.pid, *self.pool, *_children(self.process.pid), *self.seen})
        self.seen = pids
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return pids

    def stop(self) -> list[int]:
        """Warm shutdown, SIGKILL after 15 s; return the pids still alive after."""
        pids = self.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        return wait_gone(pids, 5.0)


WorkerFactory = Callable[..., WorkerProcess]


@pytest.fixture(scope="session")
def worker_factory(
    redis_url: str, distributed_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerFactory]:
    """Start real prefork workers: ``worker_factory(queues, concurrency=2, label="w", extra_env=None)``."""
    started: list[WorkerProcess] = []
    logs = tmp_path_factory.mktemp("workers")
    settings = cluster_settings(redis_url)
    env = {**os.environ, **distributed_env}

    def start(
        queues: list[str] | None = None,
        concurrency: int = 2,
        label: str = "w",
        extra_env: dict[str, str] | None = None,
        wait: bool = True,
        broker_url: str | None = None,
    ) -> WorkerProcess:
        base = f"devctl-test-{SESSION}-{label}-{len(started)}"
        served = queues or [DEFAULT_QUEUE]
        log = logs / f"{base}.log"
        cmd = [
            sys.executable,
            "-m",
            "devctl_dist.distributed.worker",
            "--queues",
            ",".join(served),
            "--concurrency",
            str(concurrency),
            "--hostname",
            f"{base}@%h",
            "--loglevel",
            "info",
        ]
        with log.open("wb") as out:
            extra = {**(extra_env or {}), **({"DEVCTL_BROKER_URL": broker_url} if broker_url else {})}
            process = subprocess.Popen(cmd, env={**env, **extra}, stdout=out, stderr=subprocess.STDOUT)
        worker = WorkerProcess(f"{base}@{socket.gethostname()}", served, process, log)
        started.append(worker)
        if wait:
            worker.wait_ready(cluster_settings(broker_url) if broker_url else settings)
        return worker

    yield start
    for worker in started:  # all shut down at once, then each is waited for
        worker.terminate()
    leftovers = {w.name: w.stop() for w in started}
    leftovers = {name: pids for name, pids in leftovers.items() if pids}
    assert not leftovers, f"worker processes left behind: {leftovers}"


@pytest.fixture(scope="session")
def two_workers(redis_url: str, worker_factory: WorkerFactory) -> list[WorkerProcess]:
    """Two workers serving the default test queue, 4 pool processes each."""
    workers = [worker_factory(concurrency=4, label=label, wait=False) for label in ("a", "b")]
    for worker in workers:
        worker.wait_ready(cluster_settings(redis_url))
    return workers


@pytest.fixture
def distributed_runner_factory(
    redis_url: str, two_workers: list[WorkerProcess]
) -> Callable[..., CeleryRunner]:
    """``factory(resume=False, **settings_overrides) -> CeleryRunner`` for the test cluster (unstarted)."""

    def make(resume: bool = False, **overrides: Any) -> CeleryRunner:
        return CeleryRunner(cluster_settings(redis_url, **overrides), resume=resume)

    return make
