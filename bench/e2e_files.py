"""Workflow files and a Makefile for the end-to-end benchmarks, written to a directory.

Names are short and commands shared through a YAML alias so 100,000 steps fit in
the loader's 4 MiB bound (a real file of that size would be split anyway).
"""

from __future__ import annotations

import random
from pathlib import Path


def block_file(path: Path, steps: int, jobs: int) -> Path:
    """One parallel block of ``steps`` ``!true`` steps under max_concurrent ``jobs``."""
    lines = [f"name: block{steps}", f"parallel: {{max_concurrent: {jobs}}}", "steps:", "  - parallel:"]
    lines += ["      name: b", "      steps:"]
    lines += [f"        - {{name: s{i}, command: '!true'}}" for i in range(steps)]
    path.write_text("\n".join(lines) + "\n")
    return path


def sequence_file(path: Path, steps: int) -> Path:
    """``steps`` sequential ``!echo`` steps (the small file ``validate`` is timed on)."""
    lines = ["name: small", "vars: {who: world}", "steps:"]
    lines += [f"  - {{name: s{i}, command: '!echo hello {{{{ who }}}} {i}'}}" for i in range(steps)]
    path.write_text("\n".join(lines) + "\n")
    return path


def _name(index: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        index, rest = divmod(index, 36)
        out = digits[rest] + out
        if not index:
            return "s" + out


def dag_file(path: Path, steps: int, *, shuffled: bool = False, seed: int = 7) -> Path:
    """A DAG: two steps in three depend on one random step among the 1,000 before them."""
    rng = random.Random(seed)
    command = "*t" if steps > 50_000 else "'!true'"  # the alias only where 4 MiB needs it
    rows = []
    for i in range(steps):
        name = _name(i)
        if i and i % 3:
            parent = _name(rng.randrange(max(0, i - 1000), i))
            rows.append(f"- {{name: {name},command: {command},depends_on: {parent}}}")
        else:
            rows.append(f"- {{name: {name},command: {command}}}")
    if shuffled:
        rng.shuffle(rows)
    text = f"name: dag{steps}\nvars: {{t: &t '!true'}}\nsteps:\n" + "\n".join(rows) + "\n"
    path.write_text(text)
    return path


def makefile(path: Path, steps: int) -> Path:
    """``steps`` phony ``true`` targets: what ``make -j8`` runs as the local baseline."""
    targets = " ".join(f"t{i}" for i in range(steps))
    rules = "".join(f"t{i}:\n\t@true\n" for i in range(steps))
    path.write_text(f".PHONY: all {targets}\nall: {targets}\n{rules}")
    return path
