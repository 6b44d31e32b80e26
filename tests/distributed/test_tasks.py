"""The worker side: revokes, time limits and lost pool children leave no process behind."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from celery import Celery

from devctl_dist.distributed.app import TASK_NAME, create_app
from devctl_dist.distributed.runner import CeleryRunner
from devctl_dist.distributed.state import cancel_key, decode_outcome, decode_report, done_key, outcome_key
from devctl_dist.distributed.tasks import LOST_CHILD_RETRIES
from devctl_dist.runners.base import StepOutcome, StepSpec
from tests.distributed.cluster import WorkerProcess, cluster_settings
from tests.evidence import pid_alive, run_id, sleeper, wait_for_pids, wait_gone

pytestmark = pytest.mark.distributed

RunnerFactory = Callable[..., CeleryRunner]


@pytest.fixture
def client_app(redis_url: str) -> Iterator[Celery]:
    """A plain Celery client of the test cluster (what Flower or a script would use)."""
    app = create_app(cluster_settings(redis_url))
    yield app
    app.close()


def _parent(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


async def _start_then(
    runner: CeleryRunner,
    spec: StepSpec,
    pidfile: Path,
    action: Callable[[list[int]], None],
    count: int = 3,
) -> tuple[StepOutcome, list[int]]:
    """Run ``spec``; once its processes wrote ``count`` pids, call ``action(pids)``."""
    await runner.start()
    try:
        task = asyncio.create_task(runner.run(spec))
        pids = await asyncio.to_thread(wait_for_pids, pidfile, count) if count else []
        action(pids)
        return await task, pids
    finally:
        await runner.close()


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGKILL"])
def test_revoke_terminate_kills_the_tree(
    distributed_runner_factory: RunnerFactory, client_app: Celery, tmp_path: Path, signame: str
) -> None:
    """A revoke from outside (Flower, a script): SIGKILL gives the pool child no chance to clean up."""
    pidfile = tmp_path / "pids"
    spec = StepSpec(run_id(), "sleepy", sleeper(pidfile))

    def revoke(_: list[int]) -> None:
        client_app.control.revoke(spec.task_id, terminate=True, signal=signame)

    outcome, pids = asyncio.run(_start_then(distributed_runner_factory(), spec, pidfile, revoke))
    assert not outcome.succeeded
    assert outcome.error is not None and "revoked" in outcome.error
    assert wait_gone(pids, 1.0) == []


def test_hard_time_limit_stops_a_step_without_timeout(
    distributed_runner_factory: RunnerFactory, tmp_path: Path
) -> None:
    """A step without timeout is stopped (tree and all) before the task's hard limit, and says why."""
    pidfile = tmp_path / "pids"
    spec = StepSpec(run_id(), "stuck", sleeper(pidfile))
    runner = distributed_runner_factory(task_time_limit=3)
    began = time.monotonic()
    outcome, pids = asyncio.run(_start_then(runner, spec, pidfile, lambda _: None))
    assert outcome.timed_out
    assert outcome.error is not None and "hard time limit" in outcome.error
    assert time.monotonic() - began < 20
    assert wait_gone(pids, 1.0) == []


def test_lost_pool_child_is_redelivered_and_its_orphans_killed(
    distributed_runner_factory: RunnerFactory, tmp_path: Path
) -> None:
    """A pool child killed mid-step: the message is re-queued (reject_on_worker_lost) and runs again,
    and the new run first kills what the lost child left behind."""
    pidfile = tmp_path / "pids"
    marker = tmp_path / "runs"
    command = f"echo run >> {marker}; if [ $(wc -l < {marker}) -ge 2 ]; then exit 0; fi; {sleeper(pidfile)}"
    spec = StepSpec(run_id(), "lost", command)

    def kill_pool_child(pids: list[int]) -> None:
        [shell] = [pid for pid in pids if _parent(pid) not in pids]  # its children's parent is the shell
        os.kill(_parent(shell), signal.SIGKILL)

    outcome, pids = asyncio.run(_start_then(distributed_runner_factory(), spec, pidfile, kill_pool_child))
    assert outcome.succeeded, outcome
    assert marker.read_text().count("run") == 2
    assert wait_gone(pids, 1.0) == []


def test_pickle_message_is_refused(
    client_app: Celery, two_workers: list[WorkerProcess], tmp_path: Path
) -> None:
    marker = tmp_path / "pickled-ran"
    rid = run_id()
    spec = StepSpec(rid, "pickled", f"touch {marker}")
    client_app.send_task(
        TASK_NAME, args=[rid, spec.name, spec.to_dict()], task_id=spec.task_id, serializer="pickle"
    )
    deadline = time.monotonic() + 15
    refused = False
    while not refused and time.monotonic() < deadline:
        refused = any("ContentDisallowed" in w.log.read_text(errors="replace") for w in two_workers)
        time.sleep(0.2)
    assert refused, "no worker logged that it refused the pickle message"
    time.sleep(1.0)
    assert not marker.exists()
    assert all(pid_alive(w.process.pid) for w in two_workers)


def test_cancel_flag_stops_a_task_before_its_step(
    client_app: Celery, redis_url: str, two_workers: list[WorkerProcess], tmp_path: Path
) -> None:
    """A message that outlives its revoke (workers restarted, revokes forgotten) still never runs."""
    marker = tmp_path / "ran"
    spec = StepSpec(run_id(), "flagged", f"touch {marker}")
    client = redis.Redis.from_url(redis_url)
    client.set(cancel_key(spec.task_id), "1", ex=60)
    client_app.send_task(TASK_NAME, args=[spec.run_id, spec.name, spec.to_dict()], task_id=spec.task_id)
    reported = client.blpop([done_key(spec.run_id)], timeout=15)
    assert reported is not None and decode_report(reported[1])[0] == spec.task_id
    raw = client.get(outcome_key(spec.task_id))
    assert raw is not None
    outcome = decode_outcome(raw)
    assert outcome.error == "cancelled before start"
    assert outcome.worker in {w.name for w in two_workers}
    assert not marker.exists()


def test_a_step_that_keeps_killing_its_pool_child_fails_after_retries(
    distributed_runner_factory: RunnerFactory, tmp_path: Path
) -> None:
    """No endless redelivery: after LOST_CHILD_RETRIES re-sends the step is reported failed."""
    runs = tmp_path / "runs"
    spec = StepSpec(run_id(), "poison", f"echo run >> {runs}; kill -9 $PPID; sleep 5")
    outcome, _ = asyncio.run(_start_then(distributed_runner_factory(), spec, runs, lambda _: None, count=0))
    assert not outcome.succeeded
    assert outcome.error is not None and "WorkerLostError" in outcome.error
    assert runs.read_text().count("run") == 1 + LOST_CHILD_RETRIES
