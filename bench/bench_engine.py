"""Local engine throughput and unlock latency, each against a baseline from the same run.

1. 1,000 `true` steps in one parallel block at max_concurrent 8 through the whole
   engine (scheduler + LocalRunner, no display) vs `make -j8` on 1,000 `true`
   targets. Target: ratio <= 1.25.
2. A chain of 100 dependent `true` steps (DAG): the gap between a step's end
   and its dependent's start, as the scheduler records them. Target: p50 <= 1 ms.

Run: .venv/bin/python bench/bench_engine.py [--steps 1000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from devctl_dist.runners.local import LocalRunner
from devctl_dist.workflows.engine import WorkflowEngine
from devctl_dist.workflows.schema import WorkflowSchema


def make_baseline(steps: int, jobs: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        makefile = Path(tmp) / "Makefile"
        targets = " ".join(f"t{i}" for i in range(steps))
        rules = "".join(f"t{i}:\n\t@true\n" for i in range(steps))
        makefile.write_text(f".PHONY: all {targets}\nall: {targets}\n{rules}")
        started = time.perf_counter()
        subprocess.run(["make", "-s", f"-j{jobs}", "-f", str(makefile)], check=True)
        return time.perf_counter() - started


def engine_block(steps: int, jobs: int) -> float:
    workflow = WorkflowSchema.model_validate(
        {
            "parallel": {"max_concurrent": jobs},
            "steps": [
                {
                    "parallel": {
                        "name": "b",
                        "steps": [{"name": f"s{i}", "command": "!true"} for i in range(steps)],
                    }
                }
            ],
        }
    )
    engine = WorkflowEngine(workflow, runner=LocalRunner())
    started = time.perf_counter()
    result = asyncio.run(engine.run_async())
    elapsed = time.perf_counter() - started
    assert result.success, result.counts()
    return elapsed


def chain_gaps(length: int) -> list[float]:
    steps = [{"name": "s0", "command": "!true"}]
    steps += [{"name": f"s{i}", "command": "!true", "depends_on": [f"s{i - 1}"]} for i in range(1, length)]
    workflow = WorkflowSchema.model_validate({"steps": steps})
    result = asyncio.run(WorkflowEngine(workflow, runner=LocalRunner()).run_async())
    assert result.success
    gaps = []
    for i in range(1, length):
        prev, cur = result.steps[f"s{i - 1}"], result.steps[f"s{i}"]
        assert prev.ended_at is not None and cur.started_at is not None
        gaps.append(cur.started_at - prev.ended_at)
    return gaps


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    bases, ours = [], []
    for _ in range(args.repeat):  # alternate so both see the same machine noise
        bases.append(make_baseline(args.steps, args.jobs))
        ours.append(engine_block(args.steps, args.jobs))
        ratio = ours[-1] / bases[-1]
        print(f"make -j{args.jobs}: {bases[-1]:.3f}s  devctl engine: {ours[-1]:.3f}s  ratio {ratio:.2f}")
    print(
        f"best of {args.repeat}: make {min(bases):.3f}s, engine {min(ours):.3f}s, "
        f"ratio {min(ours) / min(bases):.2f} (target <= 1.25)"
    )
    gaps = chain_gaps(100)
    p50 = statistics.median(gaps) * 1000
    p95 = sorted(gaps)[int(len(gaps) * 0.95)] * 1000
    print(f"unlock latency, chain of 100: p50 {p50:.3f} ms  p95 {p95:.3f} ms (target p50 <= 1 ms)")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
