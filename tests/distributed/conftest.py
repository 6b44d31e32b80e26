"""Fixtures only the distributed tests use (the shared ones live in cluster.py)."""

from __future__ import annotations

import pytest

from tests.distributed.cluster import SPECIAL_QUEUE, WorkerFactory, WorkerProcess


@pytest.fixture(scope="session")
def special_worker(worker_factory: WorkerFactory) -> WorkerProcess:
    """A worker serving only the ``special`` test queue."""
    return worker_factory(queues=[SPECIAL_QUEUE], concurrency=1, label="special")
