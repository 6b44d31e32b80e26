"""A small sample of the model-based generator, run for real: local processes and two real workers.

The same generated workflows, with every model time unit stretched to
``UNIT`` seconds, run through the real engine on the LocalRunner and on two
Celery workers. Each step writes its own start and end times; the verdict must
match the reference model: every step's state and reason, which steps
started (from the steps' own log), and the peak number of steps running at
once (from their timestamps). Only workflows whose model events lie at least
``GAP`` units apart are used, so process start-up jitter cannot reorder them.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from devctl_dist.core.results import RunResult
from devctl_dist.runners.base import StepRunner
from devctl_dist.workflows.engine import WorkflowEngine
from devctl_dist.workflows.loader import load_workflow_text
from tests.workflows.model import Flow, Leaf, Model, Verdict, leaves
from tests.workflows.semantics import max_overlap, spans
from tests.workflows.test_model_based import flows, observed, to_yaml

UNIT = 0.4  # seconds per model time unit
GAP = 0.3  # model units between any two events (120 ms here)
SAMPLE = int(os.environ.get("DEVCTL_REAL_SAMPLE", "5"))


def command(log: Path, leaf: Leaf) -> str:
    """A step that logs each attempt's start and end and behaves as the model scripted that attempt."""
    counter = log.parent / f"{leaf.name}.attempts"
    cases = " ".join(
        f"{i}) d={duration * UNIT:.6f}; c={0 if kind == 'ok' else 1};;"
        for i, (kind, duration) in enumerate(leaf.outcomes, start=1)
    )
    return (
        f"!n=$(cat {counter} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {counter}; "
        f'echo "{leaf.name}#$n start $(date +%s.%N)" >> {log}; '
        f"case $n in {cases} esac; sleep $d; "
        f'echo "{leaf.name}#$n end $(date +%s.%N)" >> {log}; exit $c'
    )


def spaced(verdict: Verdict, model: Model) -> bool:
    times = sorted(set(model.times))
    return all(b - a >= GAP for a, b in itertools.pairwise(times))


def run_for_real(flow: Flow, runner: StepRunner, tmp: Path) -> tuple[RunResult, Path]:
    log = tmp / "steps.log"
    text = to_yaml(flow, lambda leaf: command(log, leaf), unit=UNIT)
    workflow = load_workflow_text(text, os.fspath(tmp / "generated.yaml"))
    result = WorkflowEngine(workflow, runner=runner, cwd=os.fspath(tmp)).run()
    return result, log


def check(flow: Flow, make_runner: Callable[[], StepRunner], tmp: pytest.TempPathFactory) -> None:
    model = Model(flow)
    expected = model.run()
    assume(spaced(expected, model))
    result, log = run_for_real(flow, make_runner(), tmp.mktemp("real"))
    states = observed(result)
    ran = {key.split("#")[0] for key in spans(log)}
    # A step whose timeout block cut it before its first line ran is still "started" by the scheduler.
    assert {n: s for n, s in states.items()} == expected.states
    assert ran <= expected.started
    assert all(expected.states[n][0] in ("cancelled", "timed_out") for n in expected.started - ran)
    assert max_overlap(log) == expected.peak
    assert (0 if result.success else 1) == expected.exit_code
    assert len(leaves(flow.nodes)) == len(states)


real_flows = flows(kinds=["ok", "ok", "fail"], size=4)
SETTINGS = settings(
    max_examples=SAMPLE,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)


@SETTINGS
@given(flow=real_flows, data=st.data())
def test_generated_workflows_run_for_real_as_the_model_says(
    flow: Flow,
    data: st.DataObject,
    make_runner: Callable[[], StepRunner],
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    del data
    assume(flow.max_concurrent <= 8)  # two test workers have 8 pool processes in all
    check(flow, make_runner, tmp_path_factory)
