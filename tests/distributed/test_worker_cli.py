"""``run_worker`` / ``run_flower``: the argv they build, warm shutdown, and Flower's auth."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from devctl_dist.distributed.runner import CeleryRunner
from devctl_dist.distributed.worker import flower_argv, worker_argv
from devctl_dist.runners.base import StepSpec
from devctl_dist.settings import Settings
from tests.distributed.cluster import SESSION, WorkerFactory, cluster_settings
from tests.evidence import http_status, run_id, wait_for_pids


def test_worker_argv_has_the_safe_defaults() -> None:
    argv = worker_argv(Settings(), ["gpu", "default"], 3, "info")
    assert argv[0] == "worker"
    assert "--pool=prefork" in argv
    assert "--queues=gpu,default" in argv
    assert "--prefetch-multiplier=1" in argv
    assert "--task-events" in argv
    assert "--concurrency=3" in argv
    assert "--loglevel=INFO" in argv
    assert f"--hostname=devctl-{os.getpid()}@%h" in argv


def test_worker_argv_defaults_to_the_default_queue() -> None:
    argv = worker_argv(Settings(default_queue="main"), None, None, "warning")
    assert "--queues=main" in argv
    assert not any(a.startswith("--concurrency") for a in argv)


def test_flower_argv() -> None:
    assert flower_argv(5555, None) == ["flower", "--port=5555"]
    assert flower_argv(8080, "u:p") == ["flower", "--port=8080", "--basic-auth=u:p"]


@pytest.mark.distributed
def test_sigterm_is_a_warm_shutdown(worker_factory: WorkerFactory, redis_url: str, tmp_path: Path) -> None:
    """SIGTERM to a worker: the running step finishes and reports, then the worker exits 0."""
    queue = f"t{SESSION}-drain"
    worker = worker_factory(queues=[queue], concurrency=1, label="drain")
    pidfile = tmp_path / "pid"
    spec = StepSpec(run_id(), "finishing", f"echo $$ > {pidfile}; sleep 1; echo done", queue=queue)

    async def scenario() -> None:
        runner = CeleryRunner(cluster_settings(redis_url))
        await runner.start()
        try:
            task = asyncio.create_task(runner.run(spec))
            await asyncio.to_thread(wait_for_pids, pidfile, 1)
            worker.terminate()
            outcome = await asyncio.wait_for(task, 30)
            assert outcome.succeeded, outcome
            assert outcome.stdout == "done\n"
        finally:
            await runner.close()

    asyncio.run(scenario())
    assert worker.process.wait(30) == 0


def test_a_worker_that_cannot_start_exits_nonzero(tmp_path: Path) -> None:
    """An "Unrecoverable error" at start is exit 1, not 0 (Celery's worker_main drops the code)."""
    env = dict(os.environ, DEVCTL_HOME=str(tmp_path))
    command = [
        sys.executable,
        "-m",
        "devctl_dist.distributed.worker",
        "--broker",
        "redis://127.0.0.1:1/notadb",
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert "Unrecoverable error" in done.stderr, done.stderr[-2000:]
    assert done.returncode == 1, done.stderr[-2000:]


def test_a_worker_with_invalid_settings_says_so_in_one_line(tmp_path: Path) -> None:
    env = dict(os.environ, DEVCTL_RESULT_BACKEND="nosuch://backend", DEVCTL_HOME=str(tmp_path))
    command = [sys.executable, "-m", "devctl_dist.distributed.worker", "--broker", "redis://127.0.0.1:1/0"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip().splitlines() == [
        "devctl worker: error: invalid settings: DEVCTL_RESULT_BACKEND: Value error, "
        "must be a Redis URL (redis://, rediss:// or unix://), got 'nosuch://backend'"
    ]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_flower_on_a_busy_port_is_one_usage_line(tmp_path: Path) -> None:
    """Another program holds the port: exit 2 and one line naming it, not an "internal error"."""
    devctl = str(Path(sys.executable).with_name("devctl"))
    env = dict(os.environ, DEVCTL_HOME=str(tmp_path))
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        command = [devctl, "flower", "--port", str(port), "--broker", "redis://127.0.0.1:1/0"]
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("devctl: ")]
    expected = f"flower cannot listen on 127.0.0.1:{port}: Address already in use; choose another --port"
    assert errors == [f"devctl: error: {expected}"], done.stderr[-2000:]
    assert "Traceback" not in done.stderr


@pytest.fixture
def flower(redis_url: str, tmp_path: Path) -> Iterator[str]:
    port = _free_port()
    code = (
        "import sys; from devctl_dist.distributed.worker import run_flower; "
        f"sys.exit(run_flower({port}, 'admin:s3cret', {redis_url!r}))"
    )
    log = (tmp_path / "flower.log").open("wb")
    process = subprocess.Popen([sys.executable, "-c", code], stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                http_status(base + "/healthcheck")
                break
            except OSError:
                time.sleep(0.2)
        yield base
    finally:
        process.kill()  # Flower takes seconds to stop on SIGTERM; nothing to save here
        process.wait(15)
        log.close()


@pytest.mark.distributed
def test_flower_serves_our_app_behind_basic_auth(flower: str) -> None:
    assert http_status(flower + "/healthcheck") == 200  # no auth: keep Flower on an internal network
    assert http_status(flower + "/") == 401
    assert http_status(flower + "/", "admin:wrong") == 401
    assert http_status(flower + "/", "admin:s3cret") == 200


def _tasks_seen_by_flower(base: str) -> dict[str, dict[str, object]]:
    request = urllib.request.Request(base + "/api/tasks")
    request.add_header("Authorization", "Basic " + base64.b64encode(b"admin:s3cret").decode())
    with urllib.request.urlopen(request, timeout=5) as response:
        data: dict[str, dict[str, object]] = json.loads(response.read())
    return data


@pytest.mark.distributed
def test_flower_shows_each_step_as_run_step_with_run_id_and_name(
    flower: str, distributed_runner_factory: Callable[[], CeleryRunner]
) -> None:
    """Flower sees tasks only once it listens to events: send steps until one shows up."""
    rid = run_id()

    async def one_step(index: int) -> bool:
        runner = distributed_runner_factory()
        await runner.start()
        try:
            return (await runner.run(StepSpec(rid, f"flower-visible-{index}", "true"))).succeeded
        finally:
            await runner.close()

    found: list[dict[str, object]] = []
    for index in range(15):
        assert asyncio.run(one_step(index))
        deadline = time.monotonic() + 2
        while not found and time.monotonic() < deadline:
            found = [t for t in _tasks_seen_by_flower(flower).values() if rid in str(t.get("args"))]
            time.sleep(0.2)
        if found:
            break
    assert found, "Flower never showed a devctl step"
    task = found[0]
    assert task["name"] == "devctl.run_step"
    assert "flower-visible-" in str(task["args"])
    assert "env" not in str(task["args"])  # a step's env may hold secrets
