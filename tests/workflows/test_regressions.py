"""Regressions of issue 6, on both runners: failures where features combine.

1. ``complete_running`` must let the running step finish (it was cancelled as
   "not reached", and a ``KeyError`` traceback escaped the scheduler).
2. A failure before a block in a sequence skips the block's steps with the
   failure as the reason (the block wrapper was recorded differently).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from devctl_dist.core.results import StepStatus
from devctl_dist.runners.base import StepRunner
from tests.workflows.semantics import run_workflow, spans, step

Factory = Callable[[], StepRunner]


def complete_running_workflow(log: Path) -> dict[str, object]:
    return {
        "steps": [
            {
                "parallel": {
                    "name": "cr",
                    "on_failure": "complete_running",
                    "max_concurrent": 2,
                    "steps": [
                        {"name": "bad", "command": step(log, "bad", sleep=0.3, exit_code=1)},
                        {"name": "running", "command": step(log, "running", sleep=1.2)},
                        {"name": "later1", "command": step(log, "later1")},
                        {"name": "later2", "command": step(log, "later2")},
                    ],
                }
            }
        ]
    }


def test_complete_running_lets_the_running_step_finish(make_runner: Factory, tmp_path: Path) -> None:
    log = tmp_path / "log"
    result = run_workflow(complete_running_workflow(log), make_runner(), tmp_path)
    assert not result.success
    states = {name: r.status for name, r in result.steps.items()}
    assert states == {
        "bad": StepStatus.FAILED,
        "running": StepStatus.SUCCEEDED,
        "later1": StepStatus.SKIPPED,
        "later2": StepStatus.SKIPPED,
    }
    assert result.steps["later1"].skip_reason == "not started: 'bad' failed"
    ran = spans(log)
    assert set(ran) == {"bad", "running"}  # neither later step ever started
    assert ran["running"].end is not None  # it ran to its end, after the failure
    assert ran["running"].end > ran["bad"].end


def test_failure_before_a_block_skips_its_steps_with_the_reason(make_runner: Factory, tmp_path: Path) -> None:
    log = tmp_path / "log"
    data = {
        "steps": [
            {"name": "first", "command": step(log, "first", exit_code=1)},
            {"parallel": {"name": "blk", "steps": [{"name": "x", "command": step(log, "x")}]}},
        ]
    }
    result = run_workflow(data, make_runner(), tmp_path)
    assert not result.success
    assert result.steps["first"].status is StepStatus.FAILED
    assert result.steps["x"].status is StepStatus.SKIPPED
    assert result.steps["x"].skip_reason == "not started: 'first' failed"
    assert set(spans(log)) == {"first"}


def test_complete_running_through_devctl_exits_1_without_traceback(tmp_path: Path) -> None:
    import yaml

    log = tmp_path / "log"
    path = tmp_path / "cr.yaml"
    path.write_text(yaml.safe_dump(complete_running_workflow(log), sort_keys=False))
    devctl = Path(sys.executable).with_name("devctl")
    proc = subprocess.run(
        [os.fspath(devctl), "run", os.fspath(path), "--output", "plain"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert "OK running" in proc.stdout
    assert "SKIP later1: not started: 'bad' failed" in proc.stdout
    assert set(spans(log)) == {"bad", "running"}
