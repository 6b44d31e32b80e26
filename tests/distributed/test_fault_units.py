"""Unit tests of the fault-handling pieces: claims under generations (on the test Redis, they
are a Lua script), resume decisions (fakeredis), the environment scrub, signatures and the
kombu patch guard."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator

import fakeredis
import pytest
import redis

from devctl_dist.distributed import kombu_patch, signing
from devctl_dist.distributed.resume import earlier_attempt
from devctl_dist.distributed.runs import RunLiveness, task_id_for
from devctl_dist.distributed.state import (
    Lease,
    WorkerState,
    encode_outcome,
    generation_key,
    lease_key,
    live_key,
    outcome_key,
)
from devctl_dist.distributed.worker_env import scrub
from devctl_dist.runners.base import StepOutcome, StepSpec
from devctl_dist.settings import Settings


@pytest.fixture
def run() -> str:
    """A run id of this test alone (sessions may share the test DB)."""
    return f"r-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def state(redis_url: str) -> Iterator[WorkerState]:
    client = redis.Redis.from_url(redis_url)
    yield WorkerState(client, lease_seconds=15, expires=600, cancel_ttl=3600)
    client.close()


def test_a_task_of_a_run_that_is_over_never_starts(run: str, state: WorkerState) -> None:
    claim = state.begin(f"{run}:a:1", "w@h", run, 1)
    assert claim.refused == "not started: the run is over (its coordinator finished or is gone)"
    assert state.client.get(lease_key(f"{run}:a:1")) is None


def test_a_task_of_a_superseded_generation_never_starts(run: str, state: WorkerState) -> None:
    state.client.set(live_key(run), 2)
    assert state.begin(f"{run}:a:1", "w@h", run, 1).refused == (
        "not started: the run was resumed (generation 2 replaces 1)"
    )
    assert state.begin(f"{run}:a:1~g2", "w@h", run, 2).refused is None


def test_a_redelivered_finished_task_is_a_duplicate(run: str, state: WorkerState) -> None:
    state.client.set(outcome_key(f"{run}:a:1"), encode_outcome(StepOutcome(exit_code=0)))
    assert state.begin(f"{run}:a:1", "w@h").duplicate


def test_a_task_still_running_in_a_live_pool_process_is_a_duplicate(run: str, state: WorkerState) -> None:
    parent = os.getppid()  # alive, and not this process
    state.client.set(lease_key(f"{run}:a:1"), Lease("w@h", 1.0, parent).encode())
    assert state.begin(f"{run}:a:1", "w@h").duplicate
    assert not state.begin(f"{run}:b:1", "w@h").duplicate


def test_lease_decodes_old_and_new_forms() -> None:
    assert Lease.decode("w|x@h|12.5") == Lease("w|x@h", 12.5, 0)
    assert Lease.decode(Lease("w|x@h", 12.5, 42).encode()) == Lease("w|x@h", 12.5, 42)


def _spec(attempt: int = 1) -> StepSpec:
    return StepSpec("r", "a", "true", attempt=attempt)


def _decide(client: fakeredis.aioredis.FakeRedis, attempt: int, generation: int) -> object:
    return asyncio.run(earlier_attempt(client, _spec(attempt), generation))


def test_resume_reuses_success_adopts_running_and_resends_never_started() -> None:
    async def scenario() -> None:
        client = fakeredis.aioredis.FakeRedis()
        assert (await earlier_attempt(client, _spec(), 2)).outcome is None
        await client.set(lease_key(task_id_for("r", "a", 1, 1)), Lease("w", 1.0).encode())
        assert (await earlier_attempt(client, _spec(), 3)).adopt == "r:a:1"
        await client.set(outcome_key("r:a:1~g2"), encode_outcome(StepOutcome(exit_code=0)))
        reused = (await earlier_attempt(client, _spec(), 3)).outcome
        assert reused is not None and reused.succeeded

    asyncio.run(scenario())


def test_resume_continues_retries_and_reruns_a_final_failure() -> None:
    async def scenario() -> None:
        client = fakeredis.aioredis.FakeRedis()
        await client.set(outcome_key("r:a:1"), encode_outcome(StepOutcome(exit_code=1)))
        assert (await earlier_attempt(client, _spec(1), 2)).outcome is None  # the step's last word: run again
        await client.set(lease_key("r:a:2"), Lease("w", 1.0).encode())
        continued = await earlier_attempt(client, _spec(1), 2)
        assert continued.outcome is not None and continued.outcome.exit_code == 1
        assert (await earlier_attempt(client, _spec(2), 2)).adopt == "r:a:2"

    asyncio.run(scenario())


def test_generations_and_live_marker() -> None:
    async def scenario() -> None:
        client = fakeredis.aioredis.FakeRedis()
        first, second = RunLiveness(client, 15, 600), RunLiveness(client, 15, 600)
        assert await first.join("r") == 1 and first.task_id(_spec()) == "r:a:1"
        assert await second.join("r") == 2 and second.task_id(_spec()) == "r:a:1~g2"
        await first.finish()  # not its marker any more: left alone
        assert await client.get(live_key("r")) == b"2"
        await second.finish()
        assert await client.get(live_key("r")) is None

    asyncio.run(scenario())


def test_steps_starting_together_share_one_generation() -> None:
    """The scheduler starts up to max_concurrent steps at once: one generation, live before any send."""

    async def scenario() -> None:
        client = fakeredis.aioredis.FakeRedis()
        liveness = RunLiveness(client, 15, 600)
        assert await asyncio.gather(*(liveness.join("r") for _ in range(8))) == [1] * 8
        assert await client.get(generation_key("r")) == b"1"
        assert await client.get(live_key("r")) == b"1"

    asyncio.run(scenario())


def test_scrub_removes_connection_settings_and_anything_holding_the_password() -> None:
    settings = Settings(broker_url="redis://:s3c/ret@h:6379/0")
    environ = {
        "DEVCTL_BROKER_URL": settings.broker_url,
        "DEVCTL_SIGNING_KEY": "k",
        "APP_REDIS": "redis://:s3c/ret@h:6379/3",
        "DEVCTL_HOME": "/tmp/x",
        "PATH": "/bin",
    }
    assert scrub(environ, settings) == ["APP_REDIS", "DEVCTL_BROKER_URL", "DEVCTL_SIGNING_KEY"]
    assert environ == {"DEVCTL_HOME": "/tmp/x", "PATH": "/bin"}


def test_signature_covers_every_argument() -> None:
    spec = _spec().to_dict()
    good = signing.sign(b"k", "r", "a", spec, 2)
    assert signing.verify(b"k", "r", "a", spec, 2, good)
    assert not signing.verify(b"k", "r", "a", spec, 3, good)
    assert not signing.verify(b"k", "r", "a", {**spec, "command": "rm -rf /"}, 2, good)
    assert not signing.verify(b"other", "r", "a", spec, 2, good)
    assert not signing.verify(b"k", "r", "a", spec, 2, None)


def test_kombu_patch_applies_only_to_checked_versions() -> None:
    assert kombu_patch.applies_to((5, 7)) and kombu_patch.applies_to((5, 3))
    assert not kombu_patch.applies_to((5, 8)) and not kombu_patch.applies_to((6, 0))
    if kombu_patch.applies_to(kombu_patch.kombu_version()):
        assert kombu_patch.apply() and kombu_patch.apply()  # idempotent
