"""CeleryRunner against real Redis and real prefork workers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from devctl_dist.core.exceptions import BrokerUnavailableError
from devctl_dist.distributed.runner import CeleryRunner
from devctl_dist.runners.base import StepOutcome, StepSpec
from devctl_dist.settings import Settings
from tests.distributed.cluster import SPECIAL_QUEUE, TEST_DB, WorkerProcess, cluster_settings
from tests.evidence import run_id, sleeper, wait_for_pids, wait_gone

pytestmark = pytest.mark.distributed

RunnerFactory = Callable[..., CeleryRunner]


async def _run_all(runner: CeleryRunner, specs: list[StepSpec]) -> list[StepOutcome]:
    await runner.start()
    try:
        return list(await asyncio.gather(*(runner.run(spec) for spec in specs)))
    finally:
        await runner.close()


def test_round_trip_returns_output_exit_code_and_worker(
    distributed_runner_factory: RunnerFactory, two_workers: list[WorkerProcess]
) -> None:
    spec = StepSpec(run_id(), "hello", "echo out; echo err >&2; echo $DEVCTL_WORKER_NAME; exit 3")
    [outcome] = asyncio.run(_run_all(distributed_runner_factory(), [spec]))
    names = {w.name for w in two_workers}
    assert outcome.exit_code == 3
    assert outcome.stderr == "err\n"
    out, worker_env = outcome.stdout.splitlines()
    assert out == "out"
    assert outcome.worker in names
    assert worker_env == outcome.worker
    assert not outcome.succeeded
    assert outcome.started_at <= outcome.ended_at


def test_env_and_cwd_reach_the_step(distributed_runner_factory: RunnerFactory, tmp_path: Path) -> None:
    spec = StepSpec(run_id(), "env", 'echo "$GREETING $(pwd)"', env={"GREETING": "hi"}, cwd=str(tmp_path))
    [outcome] = asyncio.run(_run_all(distributed_runner_factory(), [spec]))
    assert outcome.succeeded
    assert outcome.stdout == f"hi {tmp_path}\n"


def test_step_timeout_is_enforced_on_the_worker(
    distributed_runner_factory: RunnerFactory, tmp_path: Path
) -> None:
    pidfile = tmp_path / "pids"
    spec = StepSpec(run_id(), "slow", sleeper(pidfile), timeout=1.0)
    started = time.monotonic()
    [outcome] = asyncio.run(_run_all(distributed_runner_factory(), [spec]))
    assert outcome.timed_out
    assert not outcome.succeeded
    assert time.monotonic() - started < 20
    pids = wait_for_pids(pidfile, 3, timeout=1)
    assert wait_gone(pids, 5) == []


def test_cancel_kills_the_remote_process_tree(
    distributed_runner_factory: RunnerFactory, tmp_path: Path
) -> None:
    pidfile = tmp_path / "pids"

    async def scenario() -> tuple[list[int], float]:
        runner = distributed_runner_factory()
        await runner.start()
        try:
            task = asyncio.create_task(runner.run(StepSpec(run_id(), "sleepy", sleeper(pidfile))))
            pids = await asyncio.to_thread(wait_for_pids, pidfile, 3)
            began = time.monotonic()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            return pids, time.monotonic() - began
        finally:
            await runner.close()

    pids, took = asyncio.run(scenario())
    assert took < 8, f"cancel took {took:.1f}s"
    # run() re-raised only after the worker reported the tree dead: nothing is left right now.
    assert wait_gone(pids, 0.5) == []


def test_cancel_before_start_never_runs_the_step(
    distributed_runner_factory: RunnerFactory, tmp_path: Path
) -> None:
    marker = tmp_path / "ran"
    rid = run_id()
    # Occupy every pool slot, so the victim waits in the queue when it is cancelled.
    blockers = [StepSpec(rid, f"block{i}", "sleep 2") for i in range(8)]

    async def scenario() -> None:
        runner = distributed_runner_factory()
        await runner.start()
        try:
            busy = [asyncio.create_task(runner.run(spec)) for spec in blockers]
            await asyncio.sleep(0.7)
            victim = asyncio.create_task(runner.run(StepSpec(rid, "victim", f"touch {marker}")))
            await asyncio.sleep(0.3)
            victim.cancel()
            with pytest.raises(asyncio.CancelledError):
                await victim
            await asyncio.gather(*busy)
            await asyncio.sleep(1.0)  # the victim's message, if not dropped, would run now
        finally:
            await runner.close()

    asyncio.run(scenario())
    assert not marker.exists()


def test_queue_routing(
    distributed_runner_factory: RunnerFactory, special_worker: WorkerProcess, two_workers: list[WorkerProcess]
) -> None:
    rid = run_id()
    specs = [StepSpec(rid, f"s{i}", "echo $DEVCTL_WORKER_NAME", queue=SPECIAL_QUEUE) for i in range(3)]
    specs += [StepSpec(rid, f"d{i}", "echo $DEVCTL_WORKER_NAME") for i in range(3)]
    outcomes = asyncio.run(_run_all(distributed_runner_factory(), specs))
    special = {o.stdout.strip() for o in outcomes[:3]}
    default = {o.stdout.strip() for o in outcomes[3:]}
    assert special == {special_worker.name}
    assert special_worker.name not in default
    assert default <= {w.name for w in two_workers}


def test_two_workers_share_one_batch(
    distributed_runner_factory: RunnerFactory, two_workers: list[WorkerProcess]
) -> None:
    rid = run_id()
    specs = [StepSpec(rid, f"n{i}", "sleep 0.5; echo $DEVCTL_WORKER_NAME") for i in range(8)]
    outcomes = asyncio.run(_run_all(distributed_runner_factory(), specs))
    assert all(o.succeeded for o in outcomes)
    assert {o.worker for o in outcomes} == {w.name for w in two_workers}


def test_unreachable_broker_fails_fast_with_one_line() -> None:
    settings = Settings(broker_url="redis://user:hunter2@127.0.0.1:1/0", broker_connect_timeout=1.0)
    began = time.monotonic()
    with pytest.raises(BrokerUnavailableError) as caught:
        asyncio.run(CeleryRunner(settings).start())
    message = str(caught.value)
    assert time.monotonic() - began < 5
    assert message == (
        "cannot reach broker redis://user:***@127.0.0.1:1/0 (connection refused): "
        "start Redis or set DEVCTL_BROKER_URL"
    )
    assert caught.value.exit_code == 3  # infrastructure unavailable


def test_no_worker_fails_fast_with_one_line(redis_url: str) -> None:
    empty = redis_url.rsplit("/", 1)[0] + f"/{TEST_DB + 1}"
    settings = cluster_settings(redis_url, broker_url=empty, worker_ping_timeout=1.0)
    began = time.monotonic()
    with pytest.raises(BrokerUnavailableError) as caught:
        asyncio.run(CeleryRunner(settings).start())
    assert time.monotonic() - began < 5
    assert str(caught.value) == (
        f"no devctl worker answered on {empty} within 1s: start one with 'devctl worker'"
    )
    assert "\n" not in str(caught.value)
