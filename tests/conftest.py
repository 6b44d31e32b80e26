"""Shared fixtures: the distributed test cluster, visible to every test directory.

``distributed_runner_factory`` lets the semantics suite (tests/workflows) run against
real Celery workers; see tests/distributed/cluster.py for how Redis is found.
"""

from tests.distributed.cluster import (
    distributed_env,
    distributed_runner_factory,
    redis_url,
    two_workers,
    worker_factory,
)

__all__ = ["distributed_env", "distributed_runner_factory", "redis_url", "two_workers", "worker_factory"]
