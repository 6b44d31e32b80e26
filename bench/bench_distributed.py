"""Distributed throughput and unlock latency, each against a plain-Celery baseline from the same run.

One 2-process prefork worker (started here, on its own queue) runs everything.

1. 1,000 `true` steps through the coordinator (the scheduler at max_concurrent 8
   driving ``CeleryRunner``) vs a plain Celery ``group`` of the same task and
   arguments. Target: ratio <= 1.0.
2. A chain of 100 dependent steps (a DAG) through the coordinator: the gap between
   one step's start and its dependent's start, by the steps' own clocks (`date`),
   vs a bare ``send_task(...).get()`` round trip. Target: median ratio <= 1.0.

Redis: DEVCTL_BENCH_REDIS_URL, default redis://127.0.0.1:6379/6 (flushed first).
Run: .venv/bin/python bench/bench_distributed.py [--steps 1000] [--chain 100] [--repeat 2]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import redis
from celery import group

from devctl_dist.distributed.app import TASK_NAME, create_app
from devctl_dist.distributed.runner import CeleryRunner
from devctl_dist.runners.base import StepSpec
from devctl_dist.settings import Settings
from devctl_dist.workflows.engine import WorkflowEngine
from devctl_dist.workflows.schema import WorkflowSchema

QUEUE = f"bench-{uuid.uuid4().hex[:6]}"


def bench_settings() -> Settings:
    url = os.environ.get("DEVCTL_BENCH_REDIS_URL", "redis://127.0.0.1:6379/6")
    return Settings(broker_url=url, default_queue=QUEUE)


@contextmanager
def one_worker(settings: Settings, concurrency: int = 2) -> Iterator[str]:
    """A real worker (prefork, ``concurrency`` processes) on the bench queue."""
    name = f"bench-{os.getpid()}@{socket.gethostname()}"
    env = {**os.environ, "DEVCTL_BROKER_URL": settings.broker_url, "DEVCTL_DEFAULT_QUEUE": QUEUE}
    cmd = [sys.executable, "-m", "devctl_dist.distributed.worker", "--concurrency", str(concurrency)]
    cmd += ["--hostname", name, "--loglevel", "warning"]
    process = subprocess.Popen(cmd, env=env)
    app = create_app(settings)
    try:
        deadline = time.monotonic() + 60
        while not app.control.ping(destination=[name], timeout=1.0):
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError("bench worker did not start")
        yield name
    finally:
        app.close()
        process.send_signal(signal.SIGTERM)
        process.wait(30)


def specs(run_id: str, count: int) -> list[StepSpec]:
    return [StepSpec(run_id, f"s{i}", "true") for i in range(count)]


async def through_runner(settings: Settings, count: int, concurrency: int) -> float:
    """The coordinator as users run it: the scheduler (max_concurrent) driving a CeleryRunner."""
    steps = [{"name": f"s{i}", "command": "!true", "queue": QUEUE} for i in range(count)]
    workflow = WorkflowSchema.model_validate(
        {"parallel": {"max_concurrent": concurrency}, "steps": [{"parallel": {"name": "b", "steps": steps}}]}
    )
    engine = WorkflowEngine(workflow, runner=CeleryRunner(settings))
    started = time.perf_counter()
    result = await engine.run_async()
    elapsed = time.perf_counter() - started
    assert result.success, result.counts()
    return elapsed


def plain_group(settings: Settings, count: int) -> float:
    app = create_app(settings)
    run_id = uuid.uuid4().hex[:8]
    tasks = group(app.signature(TASK_NAME, args=[run_id, s.name, s.to_dict()]) for s in specs(run_id, count))
    try:
        started = time.perf_counter()
        results = tasks.apply_async(queue=QUEUE).get(timeout=600)
        elapsed = time.perf_counter() - started
    finally:
        app.close()
    assert all(r["exit_code"] == 0 for r in results)
    return elapsed


async def chain_gaps(settings: Settings, length: int) -> list[float]:
    """A DAG chain through the scheduler; each step prints its own start time (`date`, no shell)."""
    steps = [{"name": "s0", "command": "!date +%s.%N", "queue": QUEUE}]
    steps += [
        {"name": f"s{i}", "command": "!date +%s.%N", "queue": QUEUE, "depends_on": [f"s{i - 1}"]}
        for i in range(1, length)
    ]
    engine = WorkflowEngine(WorkflowSchema.model_validate({"steps": steps}), runner=CeleryRunner(settings))
    result = await engine.run_async()
    assert result.success, result.counts()
    stamps = [float(result.steps[f"s{i}"].stdout or "0") for i in range(length)]
    return [b - a for a, b in itertools.pairwise(stamps)]  # includes `date`'s own ~1 ms: an upper bound


def bare_round_trips(settings: Settings, count: int) -> list[float]:
    app = create_app(settings)
    run_id = uuid.uuid4().hex[:8]
    times = []
    try:
        for spec in specs(run_id, count):
            started = time.perf_counter()
            app.send_task(TASK_NAME, args=[run_id, spec.name, spec.to_dict()], queue=QUEUE).get(timeout=60)
            times.append(time.perf_counter() - started)
    finally:
        app.close()
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--chain", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    settings = bench_settings()
    redis.Redis.from_url(settings.broker_url).flushdb()
    with one_worker(settings):
        asyncio.run(through_runner(settings, 50, 8))  # warm both paths
        plain_group(settings, 50)
        ours, theirs = [], []
        for _ in range(args.repeat):
            ours.append(asyncio.run(through_runner(settings, args.steps, 8)))
            theirs.append(plain_group(settings, args.steps))
        gaps = asyncio.run(chain_gaps(settings, args.chain))
        trips = bare_round_trips(settings, args.chain)
    best_ours, best_theirs = min(ours), min(theirs)
    print(f"throughput: {args.steps} `true` steps, one 2-process worker (best of {args.repeat})")
    print(f"  coordinator, max_concurrent 8: {best_ours:.2f}s ({args.steps / best_ours:.0f} steps/s)")
    print(f"  plain Celery group:            {best_theirs:.2f}s ({args.steps / best_theirs:.0f} tasks/s)")
    print(f"  ratio runner/group: {best_ours / best_theirs:.2f} (target <= 1.0)")
    gap, trip = statistics.median(gaps), statistics.median(trips)
    print(f"unlock latency: chain of {args.chain} steps")
    print(f"  median step start -> dependent start: {gap * 1000:.2f} ms (p90 {_p90(gaps) * 1000:.2f} ms)")
    print(f"  bare send_task().get() round trip: {trip * 1000:.2f} ms (p90 {_p90(trips) * 1000:.2f} ms)")
    print(f"  ratio: {gap / trip:.2f} (target <= 1.0)")
    return 0


def _p90(values: list[float]) -> float:
    return sorted(values)[int(len(values) * 0.9)]


if __name__ == "__main__":
    sys.exit(main())
