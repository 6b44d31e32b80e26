"""Time building, validating and planning big DAGs, against bare graphlib.

Run: .venv/bin/python bench/bench_graph.py

Each step depends on up to three of the 1,000 steps before it (about 3 edges per
step: 100k steps have ~300k edges). Two declaration orders are timed:

- in order: dependencies declared before their dependents (how workflows are
  written): the graph plans in one pass;
- shuffled: forward references everywhere, so graphlib's TopologicalSorter does
  the cycle check and the layering.

Columns: ``ours`` is DependencyGraph build + validate + topological_sort +
plan_waves; ``graphlib`` is the baseline, bare ``TopologicalSorter`` add() and
prepare() on the same graph in the same run; ``ratio`` is ours / graphlib;
``growth`` is the time per step over the time per step at the smallest size
(1.0 is perfectly linear; shuffled input drifts up with size from cache misses,
bare graphlib drifts the same way).
"""

from __future__ import annotations

import gc
import random
import time
from collections.abc import Callable
from graphlib import TopologicalSorter

from devctl_dist.workflows.graph import DependencyGraph, plan_waves


def make_dag(size: int, *, shuffled: bool, seed: int = 7) -> dict[str, list[str]]:
    """A random DAG; ``shuffled`` declares its steps in random order."""
    rng = random.Random(seed)
    deps: dict[str, list[str]] = {}
    for i in range(size):
        low = max(0, i - 1000)
        picks = {rng.randrange(low, i) for _ in range(3)} if i else set()
        deps[f"s{i}"] = [f"s{j}" for j in sorted(picks)]
    if shuffled:
        names = list(deps)
        rng.shuffle(names)
        deps = {name: deps[name] for name in names}
    return deps


def ours(deps: dict[str, list[str]]) -> None:
    """What ``devctl run --dry-run`` does: build, validate, layer, split into waves."""
    graph = DependencyGraph.from_mapping(deps)
    graph.validate()
    plan_waves(graph.topological_sort(), 10)


def bare_graphlib(deps: dict[str, list[str]]) -> None:
    sorter: TopologicalSorter[str] = TopologicalSorter()
    for name, needs in deps.items():
        sorter.add(name, *needs)
    sorter.prepare()


def best_of(
    action: Callable[[dict[str, list[str]]], None], deps: dict[str, list[str]], runs: int = 5
) -> float:
    times = []
    for _ in range(runs):
        gc.collect()
        start = time.perf_counter()
        action(deps)
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    sizes = [10_000, 30_000, 100_000]
    print(
        f"{'order':>9} {'steps':>8} {'edges':>8} {'ours s':>8} {'graphlib s':>10} {'ratio':>6} {'growth':>7}"
    )
    for shuffled in (False, True):
        base: float | None = None
        for size in sizes:
            deps = make_dag(size, shuffled=shuffled)
            edges = sum(len(v) for v in deps.values())
            mine, baseline = best_of(ours, deps), best_of(bare_graphlib, deps)
            per_step = mine / size
            base = base or per_step
            label = "shuffled" if shuffled else "in order"
            print(
                f"{label:>9} {size:>8} {edges:>8} {mine:>8.3f} {baseline:>10.3f}"
                f" {mine / baseline:>6.2f} {per_step / base:>7.2f}"
            )


if __name__ == "__main__":
    main()
