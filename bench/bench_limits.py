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


def run(steps: int, rate: float, cap: int, log: Path) -> None:
    command = f'!echo "start $(date +%s.%N)" >> {log}; sleep 0.3; echo "end $(date +%s.%N)" >> {log}'
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--max-concurrent", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "log"
        run(args.steps, args.rate, args.max_concurrent, log)
        events = [
            (float(t), 1 if kind == "start" else -1)
            for kind, t in (ln.split() for ln in log.read_text().splitlines())
        ]
    starts = sorted(t for t, d in events if d == 1)
    achieved = (len(starts) - 1) / (starts[-1] - starts[0])
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
