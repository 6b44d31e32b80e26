"""The in-process breakdown of one ``devctl`` command, run in a fresh process by bench_e2e.py.

Mirrors what ``devctl run`` / ``devctl validate`` / ``devctl run --dry-run`` do, timing
each phase: start-up (importing the CLI), load (read, parse, schema), plan (graph
checks, lint for validate, waves for a dry run, engine set-up), run (the scheduler
and runner, minus output) and output (time spent inside the listeners, finalize
included). Prints one JSON line: the phase times in seconds.

Run: python bench/e2e_breakdown.py run|validate|dry-run FILE [--output plain] [--distributed]
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from typing import Any

STARTED = time.perf_counter()
import devctl_dist.cli as cli  # noqa: E402  (the import is the start-up being timed)

IMPORTED = time.perf_counter()


class TimedListener:
    """Forwards every event to ``inner`` and adds the time it took to ``spent``."""

    def __init__(self, inner: Any, spent: list[float]) -> None:
        self._inner, self._spent = inner, spent

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._inner, name)
        if not callable(method):
            return method

        def timed(*args: Any) -> Any:
            started = time.perf_counter()
            try:
                return method(*args)
            finally:
                self._spent[0] += time.perf_counter() - started

        return timed


def run(args: argparse.Namespace, phases: dict[str, float]) -> None:
    """Lazy imports count in the phase that first needs them, as in ``devctl``."""
    mark = time.perf_counter()
    workflow, _ = cli.load_checked(args.file)
    phases["load+check"] = time.perf_counter() - mark
    mark = time.perf_counter()
    from devctl_dist.cli_support import PipeSafeStream
    from devctl_dist.core.output import finalize, make_listeners
    from devctl_dist.workflows.engine import WorkflowEngine

    runner = cli.celery_runner(None, workflow=workflow) if args.distributed else None
    stream: Any = PipeSafeStream(sys.stdout)
    listeners = make_listeners(args.output, results_file=None, stream=stream, is_tty=sys.stdout.isatty())
    spent = [0.0]
    timed: Any = [TimedListener(listener, spent) for listener in listeners]
    engine = WorkflowEngine(workflow, runner=runner, listeners=timed)
    phases["plan"] = time.perf_counter() - mark
    mark = time.perf_counter()
    result = engine.run()
    ran = time.perf_counter() - mark
    mark = time.perf_counter()
    finalize(listeners, result)
    phases["run"] = ran - spent[0]
    phases["output"] = spent[0] + time.perf_counter() - mark
    assert result.success, result.counts()


def validate(args: argparse.Namespace, phases: dict[str, float]) -> None:
    gc.disable()  # as devctl does for a command that starts nothing (cli_check.starts_nothing)
    mark = time.perf_counter()
    from devctl_dist.workflows.loader import load_workflow
    from devctl_dist.workflows.validation import check

    workflow = load_workflow(args.file)
    phases["load"] = time.perf_counter() - mark
    mark = time.perf_counter()
    from devctl_dist.workflows.lint import lint_workflow

    check(workflow)
    problems = lint_workflow(workflow, ())
    phases["plan"] = time.perf_counter() - mark  # graph checks and template lint
    assert not problems, problems[0]


def dry_run(args: argparse.Namespace, phases: dict[str, float]) -> None:
    gc.disable()  # as in validate()
    mark = time.perf_counter()
    from devctl_dist.workflows.loader import load_workflow
    from devctl_dist.workflows.validation import check

    workflow = load_workflow(args.file)
    phases["load"] = time.perf_counter() - mark
    mark = time.perf_counter()
    from devctl_dist.workflows.graph_format import format_plan

    check(workflow)
    format_plan(workflow, None, as_json=False)
    phases["plan"] = time.perf_counter() - mark


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["run", "validate", "dry-run"])
    parser.add_argument("file")
    parser.add_argument("--output", default="plain")
    parser.add_argument("--distributed", action="store_true")
    args = parser.parse_args()
    phases = {"start-up": IMPORTED - STARTED}
    {"run": run, "validate": validate, "dry-run": dry_run}[args.command](args, phases)
    sys.stdout.flush()
    print(json.dumps(phases), file=sys.stderr)


if __name__ == "__main__":
    main()
