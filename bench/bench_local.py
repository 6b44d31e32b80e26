"""Benchmark: 1,000 ``true`` steps through LocalRunner vs ``make -j8`` on the same commands.

Run: ``.venv/bin/python bench/bench_local.py [--steps 1000] [--concurrency 8] [--rounds 3]``.
Both are measured in the same run (best of ``--rounds``, alternating) and the
ratio LocalRunner / make is printed; DESIGN.md's target is at most 1.25. For
reference it also times bare ``asyncio.create_subprocess_exec`` (Python's
default child watcher) on the same commands.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from devctl_dist.runners.base import StepSpec
from devctl_dist.runners.local import LocalRunner


async def run_local(steps: int, concurrency: int, command: str) -> float:
    """Seconds to run ``steps`` copies of ``command`` at ``concurrency`` through LocalRunner."""
    runner = LocalRunner()
    await runner.start()
    gate = asyncio.Semaphore(concurrency)
    failures = 0

    async def one(index: int) -> None:
        nonlocal failures
        async with gate:
            outcome = await runner.run(StepSpec(run_id="bench", name=f"s{index}", command=command))
            failures += not outcome.succeeded

    began = time.perf_counter()
    await asyncio.gather(*(one(index) for index in range(steps)))
    elapsed = time.perf_counter() - began
    await runner.close()
    if failures:
        raise SystemExit(f"{failures} steps failed")
    return elapsed


async def run_bare_asyncio(steps: int, concurrency: int, command: str) -> float:
    """Seconds for the same steps as bare asyncio subprocesses (output captured)."""
    gate = asyncio.Semaphore(concurrency)
    argv = command.split()

    async def one() -> None:
        async with gate:
            process = await asyncio.create_subprocess_exec(
                *argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
            )
            await process.communicate()

    began = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(steps)))
    return time.perf_counter() - began


def write_makefile(directory: Path, steps: int, command: str) -> None:
    targets = [f"t{index}" for index in range(steps)]
    lines = [f"all: {' '.join(targets)}", f".PHONY: all {' '.join(targets)}"]
    lines += [f"{target}:\n\t@{command}" for target in targets]
    (directory / "Makefile").write_text("\n".join(lines) + "\n")


def run_make(directory: Path, concurrency: int) -> float:
    began = time.perf_counter()
    subprocess.run(["make", "-s", f"-j{concurrency}", "-C", str(directory)], check=True)
    return time.perf_counter() - began


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--command", default="true")
    args = parser.parse_args()
    if shutil.which("make") is None:
        print("make not found: cannot measure the baseline", file=sys.stderr)
        return 2
    local_times: list[float] = []
    make_times: list[float] = []
    bare_times: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        write_makefile(Path(tmp), args.steps, args.command)
        for _ in range(args.rounds):
            make_times.append(run_make(Path(tmp), args.concurrency))
            local_times.append(asyncio.run(run_local(args.steps, args.concurrency, args.command)))
            bare_times.append(asyncio.run(run_bare_asyncio(args.steps, args.concurrency, args.command)))
    local, make, bare = min(local_times), min(make_times), min(bare_times)
    print(f"{args.steps} x {args.command!r} at concurrency {args.concurrency}, best of {args.rounds}:")
    print(f"  LocalRunner  {local:.3f} s   ({', '.join(f'{t:.3f}' for t in local_times)})")
    print(f"  make -j{args.concurrency:<4} {make:.3f} s   ({', '.join(f'{t:.3f}' for t in make_times)})")
    print(f"  asyncio bare {bare:.3f} s   ({', '.join(f'{t:.3f}' for t in bare_times)})  [reference]")
    print(f"  ratio        {local / make:.2f}x   LocalRunner / make (target <= 1.25x)")
    print(f"  ratio        {bare / make:.2f}x   bare asyncio / make")
    return 0


if __name__ == "__main__":
    sys.exit(main())
