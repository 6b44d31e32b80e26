"""The Celery app built from settings, and per-queue rate limits on real workers."""

from __future__ import annotations

import asyncio
import itertools
import json
from pathlib import Path

import pytest

from devctl_dist.distributed.app import TASK_NAME, create_app, rate_limit_for_queues
from devctl_dist.distributed.runner import CeleryRunner
from devctl_dist.distributed.tasks import create_worker_app
from devctl_dist.runners.base import StepSpec
from devctl_dist.settings import Settings
from tests.distributed.cluster import SESSION, WorkerFactory, cluster_settings
from tests.evidence import run_id


def test_app_is_json_only_late_ack_prefetch_one_with_events() -> None:
    app = create_app(Settings(broker_url="redis://example:6379/3"))
    conf = app.conf
    assert conf.task_serializer == "json"
    assert conf.result_serializer == "json"
    assert list(conf.accept_content) == ["json"]
    assert conf.task_acks_late is True
    assert conf.task_reject_on_worker_lost is True
    assert conf.worker_prefetch_multiplier == 1
    assert conf.worker_send_task_events is True
    assert conf.task_send_sent_event is True
    assert TASK_NAME not in app.tasks  # the coordinator sends by name; only workers register it
    assert TASK_NAME in create_worker_app(Settings(broker_url="redis://example:6379/3")).tasks


def test_visibility_timeout_applies_to_broker_and_results_and_bounds_the_hard_limit() -> None:
    settings = Settings(broker_url="redis://example:6379/3", visibility_timeout=7200, result_expires=600)
    conf = create_app(settings).conf
    assert conf.broker_transport_options["visibility_timeout"] == 7200
    assert conf.result_backend_transport_options["visibility_timeout"] == 7200
    assert conf.task_time_limit == settings.hard_time_limit < 7200
    assert conf.result_expires == 600
    assert conf.result_backend == "redis://example:6379/3"


def test_default_queue_routes_the_task() -> None:
    conf = create_app(Settings(default_queue="builds")).conf
    assert conf.task_default_queue == "builds"
    assert conf.task_routes[TASK_NAME] == {"queue": "builds"}


def test_rate_limit_for_served_queues_picks_the_strictest() -> None:
    settings = Settings(queue_rate_limits={"api": "10/s", "slow": "30/m", "hourly": "100/h"})
    assert rate_limit_for_queues(settings, ["default"]) is None
    assert rate_limit_for_queues(settings, ["api"]) == "10/s"
    assert rate_limit_for_queues(settings, ["api", "slow"]) == "30/m"
    assert rate_limit_for_queues(settings, ["api", "hourly"]) == "100/h"


@pytest.mark.distributed
def test_queue_rate_limit_throttles_the_worker_serving_it(
    worker_factory: WorkerFactory, redis_url: str, tmp_path: Path
) -> None:
    """DEVCTL_QUEUE_RATE_LIMITS={"<queue>": "2/s"}: that worker starts at most 2 steps a second."""
    queue = f"t{SESSION}-api"
    limits = json.dumps({queue: "2/s"})
    worker_factory(queues=[queue], concurrency=4, label="api", extra_env={"DEVCTL_QUEUE_RATE_LIMITS": limits})
    log = tmp_path / "starts"
    rid = run_id()
    specs = [StepSpec(rid, f"call{i}", f"date +%s.%N >> {log}", queue=queue) for i in range(5)]

    async def scenario() -> None:
        runner = CeleryRunner(cluster_settings(redis_url))
        await runner.start()
        try:
            outcomes = await asyncio.gather(*(runner.run(spec) for spec in specs))
            assert all(o.succeeded for o in outcomes)
        finally:
            await runner.close()

    asyncio.run(scenario())
    starts = sorted(float(line) for line in log.read_text().split())
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    # Token bucket of capacity 1 at 2/s: one start every 0.5 s (a little slack for timer jitter).
    assert starts[-1] - starts[0] >= 1.8, gaps
    assert min(gaps) >= 0.35, gaps
