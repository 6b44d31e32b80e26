"""The worker's side of the report keys, on the test Redis (our own Redis code and Lua, no Celery)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import redis

from devctl_dist.distributed.state import (
    Lease,
    WorkerState,
    cancel_key,
    decode_outcome,
    decode_report,
    done_key,
    lease_key,
    outcome_key,
)
from devctl_dist.runners.base import StepOutcome


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def run() -> str:
    """A run id of this test alone (sessions may share the test DB)."""
    return f"r-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def state(client: redis.Redis) -> WorkerState:
    return WorkerState(client, lease_seconds=15, expires=600, cancel_ttl=3600)


def test_begin_takes_a_lease(run: str, state: WorkerState, client: redis.Redis) -> None:
    claim = state.begin(f"{run}:a:1", "w1@host")
    assert not claim.cancelled and not claim.ran_before
    raw = client.get(lease_key(f"{run}:a:1"))
    assert raw is not None
    assert Lease.decode(raw).worker == "w1@host"
    assert 0 < client.ttl(lease_key(f"{run}:a:1")) <= 15


def test_second_begin_knows_the_task_ran_before(run: str, state: WorkerState) -> None:
    state.begin(f"{run}:a:1", "w1@host")
    assert state.begin(f"{run}:a:1", "w2@host").ran_before


def test_cancel_flag_wins_and_drops_the_lease(run: str, state: WorkerState, client: redis.Redis) -> None:
    client.set(cancel_key(f"{run}:a:1"), "1")
    assert state.begin(f"{run}:a:1", "w1@host").cancelled
    assert client.get(lease_key(f"{run}:a:1")) is None


def test_finish_publishes_outcome_then_report(run: str, state: WorkerState, client: redis.Redis) -> None:
    state.begin(f"{run}:a:1", "w1@host")
    assert state.finish(f"{run}:a:1", run, StepOutcome(exit_code=0, stdout="ok\n", worker="w1@host"))
    reports = [decode_report(item) for item in client.lrange(done_key(run), 0, -1)]
    assert reports == [(f"{run}:a:1", StepOutcome(exit_code=0, stdout="ok\n", worker="w1@host"))]
    raw = client.get(outcome_key(f"{run}:a:1"))
    assert raw is not None
    assert decode_outcome(raw) == StepOutcome(exit_code=0, stdout="ok\n", worker="w1@host")
    assert client.get(lease_key(f"{run}:a:1")) is None
    assert 0 < client.ttl(done_key(run)) <= 600
    assert 0 < client.ttl(outcome_key(f"{run}:a:1")) <= 600


def test_first_report_wins(run: str, state: WorkerState, client: redis.Redis) -> None:
    assert state.finish(f"{run}:a:1", run, StepOutcome(exit_code=-15, error="cancelled: task revoked"))
    assert not state.finish(f"{run}:a:1", run, StepOutcome(exit_code=0))
    first, second = (decode_report(item) for item in client.lrange(done_key(run), 0, -1))
    assert first[1] is not None and first[1].exit_code == -15  # the report carries its outcome
    assert second == (f"{run}:a:1", None)  # a duplicate report, bare; the reader ignores it
    raw = client.get(outcome_key(f"{run}:a:1"))
    assert raw is not None and decode_outcome(raw).exit_code == -15


def test_lease_round_trip_with_odd_worker_names() -> None:
    lease = Lease("devctl-1|x@host", 1700000000.25)
    assert Lease.decode(lease.encode()) == lease
    assert Lease.decode(lease.encode().encode()) == lease


def test_report_entries_decode_both_forms() -> None:
    assert decode_report(b"run-1:a:1") == ("run-1:a:1", None)  # an older worker's bare id
    pushed = '{"t":"run-1:a:1","o":{"exit_code":3}}'
    assert decode_report(pushed) == ("run-1:a:1", StepOutcome(exit_code=3))
    with pytest.raises(ValueError):
        decode_report("{}")
