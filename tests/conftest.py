"""Shared fixtures: the distributed test cluster, visible to every test directory.

``distributed_runner_factory`` lets the semantics suite (tests/workflows) run against
real Celery workers; see tests/distributed/cluster.py for how Redis is found.
"""

import os
from collections.abc import Iterator

import pytest

from tests.distributed.cluster import (
    distributed_env,
    distributed_runner_factory,
    redis_url,
    two_workers,
    worker_factory,
)

__all__ = [
    "devctl_home",
    "distributed_env",
    "distributed_runner_factory",
    "redis_url",
    "two_workers",
    "worker_factory",
]


@pytest.fixture(scope="session", autouse=True)
def devctl_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Every run the tests make (in process, in subprocesses, on workers) is recorded in a
    throwaway run store (``DEVCTL_HOME``), never in the user's state directory."""
    home = str(tmp_path_factory.mktemp("devctl-home"))
    previous = os.environ.get("DEVCTL_HOME")
    os.environ["DEVCTL_HOME"] = home
    yield home
    if previous is None:
        os.environ.pop("DEVCTL_HOME", None)
    else:
        os.environ["DEVCTL_HOME"] = previous
