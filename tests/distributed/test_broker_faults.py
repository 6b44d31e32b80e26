"""Broker faults with a private redis-server: workers survive blips, a run without a broker ends.

``DEVCTL_BLIP_CYCLES`` (default 4) sets how many stop/start cycles the survival
test runs; the figure in docs/distributed.md was measured with 20.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import yaml

from devctl_dist.distributed.app import TASK_NAME, create_app
from devctl_dist.runners.base import StepSpec
from tests.distributed.cluster import SESSION, RedisServer, WorkerFactory, cluster_settings
from tests.evidence import run_id, wait_for_lines

pytestmark = pytest.mark.distributed

DEVCTL = str(Path(sys.executable).with_name("devctl"))


@pytest.fixture
def private_redis() -> Iterator[tuple[RedisServer, str]]:
    """A redis-server of this test alone (stopping the shared one would break other sessions)."""
    binary = shutil.which("redis-server")
    if binary is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("CI=true: the redis-server binary is needed to stop and restart a broker")
        pytest.skip("needs the redis-server binary to stop and restart a private Redis")
    server = RedisServer.start(binary)
    try:
        yield server, binary
    finally:
        server.stop()


def _shutdown_nosave(server: RedisServer) -> None:
    """What an operator's ``redis-cli shutdown nosave`` does."""
    with contextlib.suppress(redis.ConnectionError):  # the server closes the connection as it exits
        redis.Redis(port=server.port, socket_timeout=5).shutdown(nosave=True)
    server.process.wait(10)


def _send(url: str, queue: str, command: str) -> None:
    """A step as a plain task (no run generation): what the worker does with it is under test."""
    app = create_app(cluster_settings(url, default_queue=queue))
    spec = StepSpec(run_id(), "blip", command, queue=queue)
    try:
        app.send_task(
            TASK_NAME, args=[spec.run_id, spec.name, spec.to_dict()], task_id=spec.task_id, queue=queue
        )
    finally:
        app.close()


def test_worker_survives_broker_stop_start_cycles(
    private_redis: tuple[RedisServer, str], worker_factory: WorkerFactory, tmp_path: Path
) -> None:
    """Redis shut down (nosave) under a running step and back at once or after 3 s, repeatedly:
    the worker process stays up and runs the next step each time."""
    server, binary = private_redis
    url = server.url(0)
    queue = f"t{SESSION}-blip"
    worker = worker_factory(queues=[queue], concurrency=2, label="blip", broker_url=url)
    cycles = int(os.environ.get("DEVCTL_BLIP_CYCLES", "4"))
    for cycle in range(cycles):
        running = tmp_path / f"running-{cycle}"
        _send(url, queue, f"echo started >> {running}; sleep 2")
        wait_for_lines(running, 1)
        _shutdown_nosave(server)
        time.sleep(0.0 if cycle % 2 == 0 else 3.0)
        server.process = RedisServer.start(binary, server.port).process
        after = tmp_path / f"after-{cycle}"
        _send(url, queue, f"echo ran >> {after}")
        assert wait_for_lines(after, 1, timeout=60) == ["ran"], f"cycle {cycle}"
        assert worker.process.poll() is None, worker.log.read_text()[-3000:]
    assert "Unrecoverable error" not in worker.log.read_text()
    assert worker.stop() == []  # while its Redis still answers: a warm shutdown, nothing left


def _workflow(tmp_path: Path, queue: str, steps: list[dict[str, object]]) -> Path:
    for step in steps:
        step.setdefault("queue", queue)
    path = tmp_path / f"wf-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(yaml.safe_dump({"name": "faults", "steps": steps}, sort_keys=False))
    return path


def test_run_without_its_broker_ends_with_exit_3(
    private_redis: tuple[RedisServer, str],
    worker_factory: WorkerFactory,
    distributed_env: dict[str, str],
    tmp_path: Path,
) -> None:
    """Redis gone for good while a step runs and one waits: `devctl run` ends within the
    documented bound with one line and exit 3; the waiting step never runs later."""
    server, binary = private_redis
    url = server.url(0)
    queue = f"t{SESSION}-gone"
    worker = worker_factory(queues=[queue], concurrency=1, label="gone", broker_url=url)
    steps: list[dict[str, object]] = [
        {"name": "first", "command": f"!echo x >> {tmp_path}/first; sleep 6"},
        {"name": "second", "command": f"!echo x >> {tmp_path}/second", "depends_on": []},
    ]
    path = _workflow(tmp_path, queue, steps)
    env = {**os.environ, **distributed_env, "DEVCTL_BROKER_URL": url, "DEVCTL_BROKER_OUTAGE_LIMIT": "5"}
    run = subprocess.Popen(
        [DEVCTL, "run", str(path), "--distributed", "--output", "plain"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for_lines(tmp_path / "first", 1)
    _shutdown_nosave(server)
    began = time.monotonic()
    _, stderr = run.communicate(timeout=90)
    took = time.monotonic() - began
    assert run.returncode == 3, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("devctl: error")]
    assert len(errors) == 1 and "broker" in errors[0], stderr
    assert "Traceback" not in stderr
    assert took < 19 + 20, took  # bound: live-marker TTL 15 s + reconcile 2 s + 2 s, plus slack
    server.process = RedisServer.start(binary, server.port).process  # the broker returns, empty
    time.sleep(8)  # the worker is back and idle: nothing of the run starts
    assert not (tmp_path / "second").exists()
    assert worker.stop() == []


def test_queue_without_a_worker_fails_at_start(
    two_workers: list[object], distributed_env: dict[str, str], tmp_path: Path
) -> None:
    """A step naming a queue nobody consumes: one line naming the queue, exit 3, nothing runs."""
    steps = [
        {"name": "ok", "command": f"!echo ok >> {tmp_path}/ok"},
        {"name": "typo", "command": f"!echo x >> {tmp_path}/typo", "queue": "deploy-typo"},
    ]
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump({"name": "typo", "steps": steps}, sort_keys=False))
    began = time.monotonic()
    proc = subprocess.run(
        [DEVCTL, "run", str(path), "--distributed"],
        env={**os.environ, **distributed_env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 3, proc.stderr
    broker = distributed_env["DEVCTL_BROKER_URL"]
    assert proc.stderr.strip().splitlines() == [
        f"devctl: error: no devctl worker consumes queue 'deploy-typo' on {broker}: "
        "start one with 'devctl worker --queues deploy-typo'"
    ]
    assert time.monotonic() - began < 15
    assert not (tmp_path / "ok").exists() and not (tmp_path / "typo").exists()
