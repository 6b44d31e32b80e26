"""``devctl runs list|show`` and ``devctl logs``: the run history, read from the run store.

Also what ``devctl run`` needs from the history: the recorder listener, secret
masking in front of every listener, and ``--resume RUN_ID|last`` (which steps to
reuse; refuse when the workflow's steps changed since that run).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from devctl_dist.core.exceptions import UsageError
from devctl_dist.core.reporting import format_duration, summary_counts

if TYPE_CHECKING:  # the rest is imported by the commands that need it: `devctl --version` stays fast
    from devctl_dist.core.events import RunListener
    from devctl_dist.core.results import StepResult
    from devctl_dist.core.secrets import Masker
    from devctl_dist.history.recorder import HistoryRecorder
    from devctl_dist.history.store import RunStore
    from devctl_dist.workflows.schema import WorkflowSchema

RUNNING = "running"
FOLLOW_INTERVAL = 0.2


# ---------------------------------------------------------------- devctl run: history, masking, resume


@dataclass
class RunHistory:
    """What ``devctl run`` takes from the history: the run id to continue, steps to reuse, masking."""

    run_id: str | None
    reuse: dict[str, StepResult]
    masker: Masker
    recorder: HistoryRecorder
    distributed: bool = False
    broker: str | None = None

    def listeners(self, shown: Sequence[RunListener]) -> list[RunListener]:
        """The recorder (and the Redis record of a distributed run) and the display listeners,
        behind one masking listener."""
        from devctl_dist.core.secrets import MaskingListener

        records: list[RunListener] = [self.recorder]
        if self.distributed:
            from devctl_dist.distributed.run_record import RedisRunRecord
            from devctl_dist.settings import load_settings

            settings = load_settings(broker_url=self.broker) if self.broker else load_settings()
            records.append(RedisRunRecord(settings))
        return [MaskingListener(self.masker, [*records, *shown])]


def prepare_run(
    path: str,
    workflow: WorkflowSchema,
    variables: Mapping[str, Any],
    *,
    resume: str | None,
    force: bool,
    distributed: bool,
    broker: str | None = None,
) -> RunHistory:
    """Open the store, find the run to resume (if any) and build the recorder."""
    from devctl_dist.core.secrets import workflow_secrets
    from devctl_dist.history.fingerprint import step_hashes, workflow_hash
    from devctl_dist.history.recorder import HistoryRecorder
    from devctl_dist.history.store import RunStore
    from devctl_dist.workflows.validation import check, iter_steps

    store = RunStore()
    file = os.path.abspath(path)
    hashes = step_hashes(workflow)
    masker = workflow_secrets(workflow, variables, _renderer(workflow, variables))
    run_id: str | None = None
    reuse: dict[str, StepResult] = {}
    if resume is not None:
        run_id, reuse = _resume(store, file, hashes, resume, force=force, distributed=distributed)
    run = {
        "file": file,
        "step_hashes": hashes,
        "steps_hash": workflow_hash(hashes),
        "distributed": distributed,
        "resumed": resume is not None,
    }
    names = [s.display_name for s in iter_steps(check(workflow).workflow, hooks=True) if not s.is_block]
    recorder = HistoryRecorder(store, run, names, keep=set(reuse))
    return RunHistory(run_id, reuse, masker, recorder, distributed, broker)


def _renderer(workflow: WorkflowSchema, variables: Mapping[str, Any]) -> Any:
    from devctl_dist.workflows.templating import TemplateRenderer

    renderer = TemplateRenderer({**workflow.vars, **variables}, {**os.environ, **workflow.env})
    return lambda text: renderer.render(text, step="secrets")


def _refuse_if_steps_still_run(run_id: str) -> None:
    """A killed ``devctl run`` can leave its steps running: resuming now would run them twice at once."""
    from devctl_dist.runners.proctree import RUN_ID_ENV, marked_pids

    pids = sorted(marked_pids(RUN_ID_ENV, run_id))
    if pids:
        shown = " ".join(str(pid) for pid in pids[:8]) + (" ..." if len(pids) > 8 else "")
        raise UsageError(
            f"--resume {run_id}: {len(pids)} process(es) of that run still run (pids {shown}); "
            "let them end or stop them (kill), then resume"
        )


def _resume(
    store: RunStore, file: str, hashes: dict[str, str], wanted: str, *, force: bool, distributed: bool
) -> tuple[str, dict[str, StepResult]]:
    from devctl_dist.core.results import StepStatus
    from devctl_dist.history.fingerprint import changed_steps

    run = store.latest(file) if wanted == "last" else store.get_run(wanted)
    if run is None:
        if distributed and wanted != "last":  # a coordinator elsewhere ran it: Redis knows its steps
            return wanted, {}
        what = f"no earlier run of {file}" if wanted == "last" else f"no run '{wanted}'"
        raise UsageError(f"--resume {wanted}: {what} in the run store {store.path} (see 'devctl runs list')")
    if run["state"] == RUNNING:
        raise UsageError(
            f"--resume: run {run['run_id']} is still running (pid {run['pid']} on {run['host']})"
        )
    changed = changed_steps(run["step_hashes"], hashes)
    if changed and not force:
        shown = ", ".join(f"'{name}'" for name in changed[:5]) + (", ..." if len(changed) > 5 else "")
        raise UsageError(
            f"--resume {run['run_id']}: the workflow's steps changed since that run ({shown}); "
            "use --force to resume anyway (changed steps run again)"
        )
    if distributed:
        return str(run["run_id"]), {}  # the workers' records in Redis decide (exactly once)
    _refuse_if_steps_still_run(str(run["run_id"]))
    reuse = {}
    for step in store.steps(run["run_id"]):
        result = step["result"]
        if step["state"] == StepStatus.SUCCEEDED.value and result and step["name"] not in changed:
            reuse[step["name"]] = _step_result(result)
    return str(run["run_id"]), reuse


def _step_result(data: dict[str, Any]) -> StepResult:
    from devctl_dist.core.results import StepResult, StepStatus

    known = {f.name for f in dataclasses.fields(StepResult)}
    values = {key: value for key, value in data.items() if key in known}
    values["status"] = StepStatus(values.get("status", "succeeded"))
    return StepResult(**values)


# ---------------------------------------------------------------- devctl runs


@click.group("runs")
def runs_group() -> None:
    """The run history: every run, local or distributed, as recorded in the run store."""


@runs_group.command("list")
@click.option("--limit", "-n", type=click.IntRange(min=1), default=20, show_default=True, metavar="N")
@click.option("--output", "-o", type=click.Choice(("table", "json")), default="table", show_default=True)
def runs_list(limit: int, output: str) -> None:
    """The most recent runs, newest first."""
    runs = _store().list_runs(limit)
    if output == "json":
        click.echo(json.dumps([_public_run(run) for run in runs], indent=2))
        return
    if not runs:
        click.echo("no runs recorded yet")
        return
    rows = [("RUN ID", "WORKFLOW", "STATE", "STARTED", "DURATION", "STEPS")]
    for run in runs:
        rows.append(
            (
                run["run_id"],
                run["workflow"],
                run["state"] + (" (distributed)" if run["distributed"] else ""),
                _when(run["started_at"]),
                _duration(run),
                summary_counts(run["counts"]) if run["counts"] else "",
            )
        )
    _print_columns(rows)


@runs_group.command("show")
@click.argument("run_id")
@click.option("--output", "-o", type=click.Choice(("text", "json")), default="text", show_default=True)
def runs_show(run_id: str, output: str) -> None:
    """One run: where it came from, its state, and every step's state, exit code and log file."""
    store = _store()
    run = _find(store, run_id)
    steps = store.steps(run["run_id"])
    if output == "json":
        data = _public_run(run)
        data["steps"] = [{k: v for k, v in s.items() if k != "result"} for s in steps]
        click.echo(json.dumps(data, indent=2))
        return
    exit_code = "" if run["exit_code"] is None else f", exit {run['exit_code']}"
    click.echo(f"run {run['run_id']}: {run['state']}{exit_code}")
    click.echo(f"  workflow {run['workflow']} ({run['file']}), steps hash {run['steps_hash']}")
    mode = run["mode"] + (", distributed" if run["distributed"] else "")
    click.echo(f"  mode {mode}; started {_when(run['started_at'])}, took {_duration(run)}; pid {run['pid']}")
    rows = [("STEP", "STATE", "EXIT", "ATTEMPTS", "DURATION", "WORKER", "DETAIL")]
    for step in steps:
        took = ""
        if step["started_at"] and step["ended_at"]:
            took = format_duration(step["ended_at"] - step["started_at"])
        exit_text = "" if step["exit_code"] is None else str(step["exit_code"])
        detail = (step["error"] or "").splitlines()[0][:80] if step["error"] else ""
        rows.append(
            (
                step["name"],
                step["state"],
                exit_text,
                str(step["attempts"]),
                took,
                step["worker"] or "",
                detail,
            )
        )
    _print_columns(rows, indent="  ")
    click.echo(f"  logs: devctl logs {run['run_id']} [STEP]")


# ---------------------------------------------------------------- devctl logs


@click.command("logs")
@click.argument("run_id")
@click.argument("step", required=False)
@click.option("--follow", "-f", is_flag=True, help="Keep printing new lines until the run ends.")
def logs_command(run_id: str, step: str | None, follow: bool) -> None:
    """A run's full step output from its log files (one step, or all with the step name in front)."""
    from devctl_dist.history.paths import step_log_path

    store = _store()
    run = _find(store, run_id)
    names = [s["name"] for s in store.steps(run["run_id"])]
    if step is not None and step not in names:
        raise UsageError(f"run {run['run_id']} has no step '{step}' (steps: {', '.join(names[:10])})")
    shown = [step] if step is not None else names
    tails = {name: _Tail(step_log_path(store.root, run["run_id"], name)) for name in shown}
    prefix = step is None
    while True:
        running = follow and (store.get_run(run["run_id"]) or {}).get("state") == RUNNING
        for name, tail in tails.items():
            for line in tail.read():
                click.echo(f"{name} | {line}" if prefix else line)
        if not running:
            return
        sys.stdout.flush()
        time.sleep(FOLLOW_INTERVAL)  # a log file has no change notification we can rely on everywhere


class _Tail:
    """Reads a growing log file by whole lines, from where it stopped."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.partial = b""

    def read(self) -> list[str]:
        try:
            with self.path.open("rb") as handle:
                handle.seek(self.offset)
                data = handle.read()
        except FileNotFoundError:
            return []
        self.offset += len(data)
        lines = (self.partial + data).split(b"\n")
        self.partial = lines.pop()
        return [line.decode("utf-8", errors="replace") for line in lines]


# ---------------------------------------------------------------- helpers


def _store() -> RunStore:
    from devctl_dist.history.store import RunStore

    return RunStore()


def _find(store: RunStore, run_id: str) -> dict[str, Any]:
    run = store.latest() if run_id == "last" else store.get_run(run_id)
    if run is None:
        raise UsageError(f"no run '{run_id}' in the run store {store.path} (see 'devctl runs list')")
    return run


def _public_run(run: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in run.items() if key != "step_hashes"}


def _when(stamp: float | None) -> str:
    return datetime.fromtimestamp(stamp).strftime("%Y-%m-%d %H:%M:%S") if stamp else ""


def _duration(run: dict[str, Any]) -> str:
    if not run["started_at"]:
        return ""
    end = run["ended_at"] or (time.time() if run["state"] == RUNNING else None)
    return format_duration(end - run["started_at"]) if end else ""


def _print_columns(rows: Sequence[Sequence[str]], indent: str = "") -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo(
            indent + "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )
