"""End to end: the ``devctl`` process as users run it, against baselines from the same run.

Every row times whole processes (best of ``--repeat``, devctl and its baseline
alternated so both see the same machine noise) and prints the ratio and the
target. Beside each devctl row, the in-process breakdown from e2e_breakdown.py
(start-up = importing the CLI, load, plan, run, output; best of the repeats).

Local rows: ``devctl run`` of one block of ``true`` steps at max_concurrent 8, with
``--output plain`` to a pipe, vs ``make -j8`` on the same number of ``true`` targets;
the live table is timed on a pseudo-terminal. Distributed rows: ``devctl run
--distributed`` with one ``devctl worker --concurrency 2`` vs the plain Celery client
of plain_celery.py with one plain 2-process Celery worker.
Redis for the distributed rows: DEVCTL_BENCH_REDIS_URL (default redis://127.0.0.1:6379/6).

Run: python bench/bench_e2e.py [--repeat 3] [--quick] [--no-distributed] [--dist-steps N]
(without --quick or --dist-steps, the distributed rows are 1,000 and 10,000 steps)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from e2e_files import block_file, dag_file, makefile, sequence_file
from e2e_proc import devctl_cmd, run_timed, run_timed_tty, workers

BENCH = Path(__file__).resolve().parent
PY = sys.executable


@dataclass
class Row:
    """One line of the table: a devctl command, its baseline, its target."""

    label: str
    devctl: list[str]
    baseline: list[str] | None = None
    baseline_label: str = ""
    target: str = ""  # "1.5x" (ratio) or "0.12s" (absolute)
    breakdown: list[str] | None = None
    tty: bool = False
    warmup: bool = False
    env: dict[str, str] = field(default_factory=dict)
    ours: float = 0.0
    base: float = 0.0
    phases: dict[str, float] = field(default_factory=dict)

    def verdict(self) -> tuple[str, str]:
        """(ratio or seconds shown against the target, 'ok' or 'MISSED')."""
        if self.target.endswith("x"):
            ratio = self.ours / self.base
            return f"{ratio:.2f}x", "ok" if ratio <= float(self.target[:-1]) else "MISSED"
        if self.target.endswith("s"):
            return f"{self.ours:.3f}s", "ok" if self.ours <= float(self.target[:-1]) else "MISSED"
        return (f"{self.ours / self.base:.2f}x" if self.base else "", "")


def measure(row: Row, repeat: int) -> None:
    """Best of ``repeat`` for devctl and the baseline, alternated; then the breakdown."""
    env = {**os.environ, **row.env}
    if row.warmup:  # workers start their pool children lazily: not part of a run
        run_timed(row.devctl, env)
        if row.baseline is not None:
            run_timed(row.baseline, env)
    ours, base = [], []
    for _ in range(repeat):
        timer = run_timed_tty if row.tty else run_timed
        ours.append(timer(row.devctl, env))
        if row.baseline is not None:
            base.append(run_timed(row.baseline, env))
    row.ours, row.base = min(ours), min(base) if base else 0.0
    if row.breakdown is not None:
        row.phases = best_phases(row.breakdown, env, repeat)


def best_phases(args: list[str], env: dict[str, str], repeat: int) -> dict[str, float]:
    import subprocess

    best: dict[str, float] = {}
    for _ in range(max(1, repeat - 1)):
        proc = subprocess.run(
            [PY, str(BENCH / "e2e_breakdown.py"), *args],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            check=True,
        )
        phases = json.loads(proc.stderr.strip().splitlines()[-1])
        best = {k: min(v, best.get(k, v)) for k, v in phases.items()}
    return best


def local_rows(tmp: Path, quick: bool, quiet_flag: Sequence[str]) -> list[Row]:
    sizes = [1000] if quick else [1000, 10_000]
    rows = []
    for steps in sizes:
        flow, make = (
            block_file(tmp / f"block{steps}.yaml", steps, 8),
            makefile(tmp / f"Makefile{steps}", steps),
        )
        make_cmd = ["make", "-s", "-j8", "-f", str(make)]
        target = "1.5x" if steps == 1000 else "1.25x"
        run = [*devctl_cmd(), "run", str(flow)]
        rows.append(
            Row(
                f"run {steps:,} true, plain",
                [*run, "--output", "plain"],
                make_cmd,
                "make -j8",
                target,
                ["run", str(flow), "--output", "plain"],
            )
        )
        if steps == 1000:
            rows.append(Row(f"run {steps:,} true, table (pty)", run, make_cmd, "make -j8", "", tty=True))
            if quiet_flag:
                rows.append(
                    Row(
                        f"run {steps:,} true, {' '.join(quiet_flag)}",
                        [*run, *quiet_flag],
                        make_cmd,
                        "make -j8",
                        "",
                    )
                )
    return rows


def scale_rows(tmp: Path, quick: bool) -> list[Row]:
    small = sequence_file(tmp / "small10.yaml", 10)
    pass_cmd = [PY, "-c", "pass"]
    rows = [
        Row("devctl --version", [*devctl_cmd(), "--version"], pass_cmd, "python -c pass", "0.12s"),
        Row(
            "validate 10 steps",
            [*devctl_cmd(), "validate", str(small)],
            pass_cmd,
            "python -c pass",
            "0.12s",
            ["validate", str(small)],
        ),
    ]
    for steps, target in [(1000, ""), (10_000, "0.5s")]:
        dag = dag_file(tmp / f"dag{steps}.yaml", steps)
        rows.append(
            Row(
                f"validate {steps:,}-step DAG",
                [*devctl_cmd(), "validate", str(dag)],
                pass_cmd,
                "python -c pass",
                target,
                ["validate", str(dag)],
            )
        )
    if not quick:
        for shuffled in (False, True):
            dag = dag_file(tmp / f"dag100k{shuffled}.yaml", 100_000, shuffled=shuffled)
            label = "run --dry-run 100,000-step DAG" + (", shuffled" if shuffled else "")
            rows.append(
                Row(
                    label,
                    [*devctl_cmd(), "run", str(dag), "--dry-run"],
                    pass_cmd,
                    "python -c pass",
                    "3s",
                    ["dry-run", str(dag)],
                )
            )
    return rows


def dist_rows(tmp: Path, sizes: Sequence[int], queue: str, env: dict[str, str]) -> list[Row]:
    rows = []
    for steps in sizes:
        flow = block_file(tmp / f"dist{steps}.yaml", steps, 8)
        devctl = [*devctl_cmd(), "run", str(flow), "--distributed", "--output", "plain"]
        plain = [PY, str(BENCH / "plain_celery.py"), str(steps)]
        rows.append(
            Row(
                f"run {steps:,} true --distributed",
                devctl,
                [*plain, f"{queue}-plain"],
                "plain Celery group",
                "1.0x",
                ["run", str(flow), "--distributed", "--output", "plain"],
                env=env,
                warmup=True,
            )
        )
        # The floor: the same plain app with the settings devctl must keep (events, late ack, prefetch 1).
        rows.append(
            Row(
                "  same, vs plain with devctl's settings",
                devctl,
                [*plain, f"{queue}-like"],
                "plain, events+ack late",
                "",
                env={**env, "PLAIN_CELERY_LIKE_DEVCTL": "1"},
                warmup=True,
            )
        )
    return rows


def in_process_plan(repeat: int) -> Row:
    """The shuffled 100,000-step graph planned in-process (bench_graph's graph and code)."""
    from bench_graph import bare_graphlib, make_dag, ours

    deps = make_dag(100_000, shuffled=True)
    row = Row("plan shuffled 100k graph in-process", [], None, "bare graphlib", "1s")
    row.ours = min(_clock(ours, deps) for _ in range(repeat))
    row.base = min(_clock(bare_graphlib, deps) for _ in range(repeat))
    return row


def _clock(func: Callable[[dict[str, list[str]]], None], deps: dict[str, list[str]]) -> float:
    started = time.perf_counter()
    func(deps)
    return time.perf_counter() - started


def print_table(rows: list[Row]) -> None:
    print(f"{'case':40} {'baseline':>24} {'devctl':>8} {'ratio':>7} {'target':>7}  verdict  breakdown")
    for row in rows:
        _, verdict = row.verdict()
        base = f"{row.baseline_label} {row.base:.3f}s" if row.base else ""
        ratio = f"{row.ours / row.base:.2f}x" if row.base else ""
        phases = " ".join(f"{k} {v:.3f}" for k, v in row.phases.items())
        target = row.target or "-"
        print(
            f"{row.label:40} {base:>24} {row.ours:7.3f}s {ratio:>7} {target:>7}  {verdict or '-':7}  {phases}"
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="1,000-step rows only")
    parser.add_argument("--no-distributed", action="store_true")
    parser.add_argument("--only-distributed", action="store_true", help="the distributed rows alone")
    parser.add_argument("--dist-steps", type=int, default=1000)
    args = parser.parse_args(argv)
    _compile_package()
    quiet = _quiet_flag()
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        if not args.only_distributed:
            rows += scale_rows(tmp, args.quick)
            rows += local_rows(tmp, args.quick, quiet)
        for row in rows:
            measure(row, args.repeat)
        if not args.no_distributed:
            with workers() as (queue, env):
                sizes = [args.dist_steps] if args.quick or args.dist_steps != 1000 else [1000, 10_000]
                dist = dist_rows(tmp, sizes, queue, env)
                for row in dist:
                    measure(row, max(2, args.repeat - 1))
                rows += dist
    if not args.only_distributed:
        rows.append(in_process_plan(args.repeat))
    print(f"end to end, best of {args.repeat}; breakdown in seconds (start-up = importing the CLI)")
    print_table(rows)
    print_output_cost(rows)
    return 0


def print_output_cost(rows: list[Row]) -> None:
    """The issue's output target: live table and plain lines cost <= 10 % over --quiet at 1,000 steps."""
    by_label = {row.label: row for row in rows}
    quiet = next((row for row in rows if row.label.startswith("run 1,000 true, --")), None)
    if quiet is None:
        return
    for label in ("run 1,000 true, table (pty)", "run 1,000 true, plain"):
        row = by_label.get(label)
        if row is not None:
            ratio = row.ours / quiet.ours
            verdict = "ok" if ratio <= 1.10 else "MISSED"
            kind = label.removeprefix("run 1,000 true, ")
            print(f"output cost: {kind} vs --quiet {ratio:.2f}x (target 1.10x) {verdict}")


def _compile_package() -> None:
    """Byte-compile devctl_dist first, as ``pip install`` does.

    An editable install compiles nothing, and with PYTHONDONTWRITEBYTECODE set (as in
    some sandboxes) every ``devctl`` process would recompile the package (~20 ms).
    """
    import importlib.util
    import subprocess

    spec = importlib.util.find_spec("devctl_dist")
    if spec is not None and spec.submodule_search_locations:
        for folder in spec.submodule_search_locations:
            subprocess.run([PY, "-m", "compileall", "-q", folder], check=True)


def _quiet_flag() -> list[str]:
    import subprocess

    text = subprocess.run([*devctl_cmd(), "run", "--help"], capture_output=True, text=True).stdout
    if "--quiet" in text:
        return ["--quiet"]
    return ["--output", "quiet"] if "quiet" in text else []


if __name__ == "__main__":
    sys.exit(main())
