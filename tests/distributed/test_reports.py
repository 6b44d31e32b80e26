"""The coordinator's report reader on a real Redis, with reports written as a worker would."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest
import redis

from devctl_dist.distributed.reports import ReportListener
from devctl_dist.distributed.runner import _redis_client
from devctl_dist.distributed.state import Lease, WorkerState, lease_key
from devctl_dist.runners.base import StepOutcome, StepSpec
from devctl_dist.settings import Settings
from tests.distributed.cluster import cluster_settings
from tests.evidence import run_id

pytestmark = pytest.mark.distributed

Scenario = Callable[[ReportListener, WorkerState], Awaitable[None]]


def _with_listener(redis_url: str, scenario: Scenario, **overrides: object) -> list[str]:
    """Run ``scenario`` with a started listener; return the task ids it gave up on."""
    settings: Settings = cluster_settings(redis_url, **overrides)
    worker = WorkerState(redis.Redis.from_url(redis_url), settings.lease_seconds, 600, 600)
    expired: list[str] = []

    async def main() -> None:
        client = _redis_client(settings)
        listener = ReportListener(client, settings)

        async def on_expired(task_id: str) -> None:
            expired.append(task_id)

        listener.on_expired = on_expired
        await listener.start()
        try:
            await scenario(listener, worker)
        finally:
            await listener.close()
            await client.aclose()

    asyncio.run(main())
    return expired


def test_a_report_resolves_its_future_at_once(redis_url: str) -> None:
    async def scenario(listener: ReportListener, worker: WorkerState) -> None:
        spec = StepSpec(run_id(), "a", "true")
        future = await listener.expect(spec)
        began = time.monotonic()
        await asyncio.to_thread(
            worker.finish, spec.task_id, spec.run_id, StepOutcome(exit_code=0, stdout="hi")
        )
        outcome = await asyncio.wait_for(future, 5)
        assert outcome.stdout == "hi"
        assert time.monotonic() - began < 0.5

    _with_listener(redis_url, scenario, reconcile_interval=30)


def test_each_new_run_is_listened_to_at_once(redis_url: str) -> None:
    async def scenario(listener: ReportListener, worker: WorkerState) -> None:
        for _ in range(3):  # each run id adds a list to the running BLPOP
            spec = StepSpec(run_id(), "a", "true")
            future = await listener.expect(spec)
            began = time.monotonic()
            await asyncio.to_thread(worker.finish, spec.task_id, spec.run_id, StepOutcome(exit_code=0))
            await asyncio.wait_for(future, 5)
            assert time.monotonic() - began < 0.5

    _with_listener(redis_url, scenario, reconcile_interval=30)


def test_a_lost_report_is_found_by_reconciliation(redis_url: str) -> None:
    async def scenario(listener: ReportListener, worker: WorkerState) -> None:
        spec = StepSpec(run_id(), "a", "true")
        future = await listener.expect(spec)
        await asyncio.to_thread(worker.finish, spec.task_id, spec.run_id, StepOutcome(exit_code=4))
        await listener.client.delete(f"devctl:run:{spec.run_id}:done")  # the push never arrived
        outcome = await asyncio.wait_for(future, 10)
        assert outcome.exit_code == 4

    # The report may be popped before the delete; either way the future resolves.
    _with_listener(redis_url, scenario, reconcile_interval=0.5)


def test_an_expired_lease_means_the_worker_was_lost(redis_url: str) -> None:
    async def scenario(listener: ReportListener, worker: WorkerState) -> None:
        spec = StepSpec(run_id(), "a", "sleep 60")
        future = await listener.expect(spec)
        await listener.client.set(lease_key(spec.task_id), Lease("w9@host", time.time()).encode(), px=1500)
        outcome = await asyncio.wait_for(future, 15)
        assert outcome.error == "worker w9@host was lost while running the step"
        assert not outcome.timed_out

    expired = _with_listener(redis_url, scenario, reconcile_interval=0.5)
    assert len(expired) == 1


def test_a_silent_step_past_its_deadline_times_out(redis_url: str) -> None:
    async def scenario(listener: ReportListener, worker: WorkerState) -> None:
        spec = StepSpec(run_id(), "a", "sleep 60", timeout=0.5)
        future = await listener.expect(spec)
        await listener.client.set(lease_key(spec.task_id), Lease("w9@host", time.time()).encode(), ex=60)
        began = time.monotonic()
        outcome = await asyncio.wait_for(future, 20)
        assert outcome.timed_out
        assert outcome.error is not None and outcome.error.startswith("no report from worker w9@host")
        assert 1.5 < time.monotonic() - began < 10  # timeout 0.5 + grace 1 + report grace 1

    _with_listener(redis_url, scenario, reconcile_interval=0.5, report_grace=1.0)


def test_close_is_prompt_and_fails_what_is_pending(redis_url: str) -> None:
    settings = cluster_settings(redis_url)

    async def main() -> None:
        client = _redis_client(settings)
        listener = ReportListener(client, settings)
        await listener.start()
        future = await listener.expect(StepSpec(run_id(), "a", "true"))
        await asyncio.sleep(0.2)  # the reader is blocked in BLPOP now
        began = time.monotonic()
        await listener.close()
        assert time.monotonic() - began < 1.0
        with pytest.raises(ConnectionError):
            future.result()
        await client.aclose()

    asyncio.run(main())
