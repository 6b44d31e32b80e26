"""Limits as the steps see them: achieved starts/s against `rate_limit`, and peak concurrency.

Each step appends its own start/end time (`date +%s.%N`) to one file, so both
figures come from the processes, not from the scheduler's bookkeeping.
Targets: achieved rate within 5 % of rate_limit; peak <= max_concurrent.

Run: .venv/bin/python bench/bench_limits.py [--steps 100] [--rate 20] [--max-concurrent 4]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path

from devctl_dist.runners.local import LocalRunner
from devctl_dist.workflows.engine import WorkflowEngine
from devctl_dist.workflows.schema import WorkflowSchema


def run(steps: int, rate: float | None, cap: int, sleep: float, log: Path) -> list[tuple[float, int]]:
    """Run one block; return (time, +1 start / -1 end) events as the steps wrote them."""
    command = f'!echo "start $(date +%s.%N)" >> {log}; sleep {sleep}; echo "end $(date +%s.%N)" >> {log}'
    workflow = WorkflowSchema.model_validate(
        {
            "parallel": {"rate_limit": rate, "max_concurrent": cap},
            "steps": [
                {
                    "parallel": {
                        "name": "b",
                        "steps": [{"name": f"s{i}", "command": command} for i in range(steps)],
                    }
                }
            ],
        }
    )
    result = asyncio.run(WorkflowEngine(workflow, runner=LocalRunner()).run_async())
    assert result.success, result.counts()
    lines = (line.split() for line in log.read_text().splitlines())
    return [(float(stamp), 1 if kind == "start" else -1) for kind, stamp in lines]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--max-concurrent", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:  # short steps, no cap in the way: the rate decides
        events = run(args.steps, args.rate, 1000, 0.01, Path(tmp) / "log")
    starts = sorted(t for t, d in events if d == 1)
    achieved = (len(starts) - 1) / (starts[-1] - starts[0])
    with tempfile.TemporaryDirectory() as tmp:  # long steps, no rate limit: the cap decides
        events = run(4 * args.max_concurrent, None, args.max_concurrent, 0.3, Path(tmp) / "log")
    running = peak = 0
    for _, delta in sorted(events, key=lambda e: (e[0], e[1])):
        running += delta
        peak = max(peak, running)
    error = (achieved - args.rate) / args.rate * 100
    print(f"rate_limit {args.rate:g}/s: achieved {achieved:.2f} starts/s ({error:+.1f} %, target within 5 %)")
    print(
        f"max_concurrent {args.max_concurrent}: peak {peak} running at once (target <= {args.max_concurrent})"
    )


if __name__ == "__main__":
    main()
