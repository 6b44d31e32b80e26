"""Faults end in a defined outcome, never a hang: a Redis restart mid-run."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from devctl_dist.distributed.runner import CeleryRunner
from devctl_dist.runners.base import StepOutcome, StepSpec
from tests.distributed.cluster import SESSION, RedisServer, WorkerFactory, cluster_settings
from tests.evidence import run_id, sleeper, wait_for_lines, wait_for_pids

pytestmark = pytest.mark.distributed


@pytest.fixture
def own_redis() -> Iterator[tuple[RedisServer, str]]:
    """A private redis-server (restarting the shared one would break other sessions)."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("needs the redis-server binary to restart a private Redis")
    server = RedisServer.start(binary)
    try:
        yield server, binary
    finally:
        server.stop()


def test_redis_restart_mid_run(
    own_redis: tuple[RedisServer, str], worker_factory: WorkerFactory, tmp_path: Path
) -> None:
    """Redis dies (no persistence) while step A runs and step B waits in the queue:
    A finishes and its report arrives after the restart; B is reported lost, not awaited forever."""
    server, binary = own_redis
    url = server.url(0)
    queue = f"t{SESSION}-fault"
    worker_factory(queues=[queue], concurrency=1, label="fault", broker_url=url)
    pidfile = tmp_path / "a.pid"
    rid = run_id()
    running = StepSpec(rid, "a", f"echo $$ > {pidfile}; sleep 4; echo done", queue=queue)
    queued = StepSpec(rid, "b", "echo b", queue=queue)

    async def scenario() -> None:
        runner = CeleryRunner(cluster_settings(url, default_queue=queue, reconcile_interval=1.0))
        await runner.start()
        try:
            task_a = asyncio.create_task(runner.run(running))
            await asyncio.to_thread(wait_for_pids, pidfile, 1)
            task_b = asyncio.create_task(runner.run(queued))
            await asyncio.sleep(0.5)
            await asyncio.to_thread(server.crash_and_restart, binary)
            began = time.monotonic()
            outcome_a, outcome_b = await asyncio.wait_for(asyncio.gather(task_a, task_b), 60)
            assert outcome_a.succeeded, outcome_a
            assert outcome_a.stdout == "done\n"
            assert not outcome_b.succeeded
            assert outcome_b.error is not None and outcome_b.error.startswith(
                "step lost: the broker restarted"
            )
            assert time.monotonic() - began < 30
        finally:
            await runner.close()

    asyncio.run(scenario())


def test_worker_killed_mid_step_is_reported_lost(
    worker_factory: WorkerFactory, redis_url: str, tmp_path: Path
) -> None:
    """kill -9 of a whole worker: its lease expires and the step fails with a clear error."""
    queue = f"t{SESSION}-doomed"
    worker = worker_factory(queues=[queue], concurrency=1, label="doomed")
    pidfile = tmp_path / "pids"
    spec = StepSpec(run_id(), "orphaned", sleeper(pidfile, 30), queue=queue)

    async def scenario() -> list[int]:
        runner = CeleryRunner(cluster_settings(redis_url, default_queue=queue, reconcile_interval=1.0))
        await runner.start()
        try:
            task = asyncio.create_task(runner.run(spec))
            pids = await asyncio.to_thread(wait_for_pids, pidfile, 3)
            await asyncio.sleep(1.5)  # the coordinator has seen the lease
            worker.process.send_signal(signal.SIGKILL)
            began = time.monotonic()
            outcome = await asyncio.wait_for(task, 60)
            assert outcome.error == f"worker {worker.name} was lost while running the step"
            assert time.monotonic() - began < 20  # lease 6 s + reconcile 1 s, with slack
            return pids
        finally:
            await runner.close()

    pids = asyncio.run(scenario())
    for pid in pids:  # a SIGKILLed worker cannot clean up: its container (or the operator) must
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _coordinator_script(spec: StepSpec) -> str:
    return (
        "import asyncio, json, sys\n"
        "from devctl_dist.distributed.runner import CeleryRunner\n"
        "from devctl_dist.runners.base import StepSpec\n"
        "from devctl_dist.settings import Settings\n"
        "async def main():\n"
        "    runner = CeleryRunner(Settings())\n"
        "    await runner.start()\n"
        f"    await runner.run(StepSpec.from_dict(json.loads({json.dumps(json.dumps(spec.to_dict()))})))\n"
        "asyncio.run(main())\n"
    )


def test_killed_coordinator_resumes_without_running_a_step_twice(
    distributed_runner_factory: Callable[..., CeleryRunner], distributed_env: dict[str, str], tmp_path: Path
) -> None:
    """kill -9 of `devctl run` mid-step: a resuming runner adopts the running task, reuses its success."""
    runs = tmp_path / "runs"
    spec = StepSpec(run_id(), "deploy", f"echo run >> {runs}; sleep 2; echo done")
    env = {**os.environ, **distributed_env}
    coordinator = subprocess.Popen([sys.executable, "-c", _coordinator_script(spec)], env=env)
    try:
        wait_for_lines(runs, 1)
    finally:
        coordinator.kill()
        coordinator.wait()

    async def resume() -> list[StepOutcome]:
        runner = distributed_runner_factory(resume=True)
        await runner.start()
        try:
            first = await runner.run(spec)  # adopts the task still running on the worker
            second = await runner.run(spec)  # reuses the reported success
            return [first, second]
        finally:
            await runner.close()

    outcomes = asyncio.run(resume())
    assert [o.stdout for o in outcomes] == ["done\n", "done\n"], outcomes
    assert runs.read_text() == "run\n"
