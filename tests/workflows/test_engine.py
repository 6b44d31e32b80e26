"""The sequential path (backward compatibility) and run-level behaviour of the engine."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from devctl_dist.runners.base import StepRunner
from devctl_dist.workflows.results import StepStatus
from tests.workflows.semantics import run_workflow, spans, step

Factory = Callable[[], StepRunner]


def test_sequential_steps_run_in_order(make_runner: Factory, tmp_path: Path) -> None:
    log = tmp_path / "log"
    data = {"steps": [{"name": n, "command": step(log, n, sleep=0.1)} for n in ("one", "two", "three")]}
    result = run_workflow(data, make_runner(), tmp_path)
    assert result.success and result.mode == "sequential"
    s = spans(log)
    assert (s["one"].end or 0) <= s["two"].start and (s["two"].end or 0) <= s["three"].start


def test_failure_stops_the_sequence(make_runner: Factory, tmp_path: Path) -> None:
    log = tmp_path / "log"
    data = {
        "steps": [
            {"name": "bad", "command": step(log, "bad", exit_code=5)},
            {"name": "next", "command": step(log, "next")},
        ]
    }
    result = run_workflow(data, make_runner(), tmp_path)
    assert not result.success
    assert result.steps["bad"].exit_code == 5
    assert result.steps["next"].status is StepStatus.SKIPPED
    assert set(spans(log)) == {"bad"}


def test_on_failure_continue_and_skip_go_on(make_runner: Factory, tmp_path: Path) -> None:
    log = tmp_path / "log"
    data = {
        "steps": [
            {"name": "a", "command": step(log, "a", exit_code=1), "on_failure": "continue"},
            {"name": "b", "command": step(log, "b", exit_code=1), "on_failure": "skip"},
            {"name": "c", "command": step(log, "c")},
        ]
    }
    result = run_workflow(data, make_runner(), tmp_path)
    assert result.success
    assert result.steps["a"].status is StepStatus.FAILED_ALLOWED
    assert result.steps["b"].status is StepStatus.FAILED_ALLOWED
    assert set(spans(log)) == {"a", "b", "c"}


def test_original_devctl_workflow_features(make_runner: Factory, tmp_path: Path) -> None:
    out = tmp_path / "out"
    data = {
        "name": "legacy",
        "description": "written for the original devctl",
        "version": "1.0",
        "vars": {"who": "world", "greeting": "hello"},
        "env": {"TARGET": "{{ who }}"},
        "steps": [
            {
                "name": "hello",
                "command": "!echo {{ greeting }} $TARGET | tr a-z A-Z && echo done || echo never",
            },
            {
                "name": "use",
                "command": f'!echo \'{{{{ results["hello"].stdout | replace("\\n", " ") }}}}\' > {out}',
                "condition": "{{ results['hello'].exit_code == 0 }}",
                "timeout": 10,
                "retries": 0,
            },
            {"name": "params", "command": f"!printf '%s|' >> {out}", "params": {"msg": "it's; rm -rf /"}},
        ],
    }
    result = run_workflow(data, make_runner(), tmp_path)
    assert result.success, result.steps
    assert result.steps["hello"].stdout == "HELLO WORLD\ndone\n"
    lines = out.read_text()
    assert lines.startswith("HELLO WORLD done")
    assert "--msg|it's; rm -rf /|" in lines  # quoted: one argument, never executed


def test_undefined_variable_is_a_clear_step_error(make_runner: Factory, tmp_path: Path) -> None:
    data = {"steps": [{"name": "deploy", "command": "!echo {{ region }}"}]}
    result = run_workflow(data, make_runner(), tmp_path)
    assert result.steps["deploy"].status is StepStatus.FAILED
    assert "region" in (result.steps["deploy"].error or "")


def test_cli_vars_override_workflow_vars(make_runner: Factory, tmp_path: Path) -> None:
    out = tmp_path / "out"
    data = {
        "vars": {"env": "dev"},
        "steps": [{"name": "s", "command": f"!echo {{{{ env | quote }}}} > {out}"}],
    }
    result = run_workflow(data, make_runner(), tmp_path, variables={"env": "prod"})
    assert result.success
    assert out.read_text() == "prod\n"


def test_hooks_run_after_success_or_failure(make_runner: Factory, tmp_path: Path) -> None:
    log = tmp_path / "log"
    data = {
        "steps": [{"name": "main", "command": step(log, "main", exit_code=1)}],
        "on_success": [{"name": "yay", "command": step(log, "yay")}],
        "on_failure": [{"name": "cleanup", "command": step(log, "cleanup")}],
    }
    result = run_workflow(data, make_runner(), tmp_path)
    assert not result.success
    assert set(spans(log)) == {"main", "cleanup"}
    assert result.steps["cleanup"].status is StepStatus.SUCCEEDED


def test_unknown_devctl_command_fails_the_step_clearly(make_runner: Factory, tmp_path: Path) -> None:
    data = {"steps": [{"name": "sync", "command": "argocd apps sync", "params": {"app": "api"}}]}
    result = run_workflow(data, make_runner(), tmp_path)
    assert result.steps["sync"].status is StepStatus.FAILED
    assert "unknown devctl command" in (result.steps["sync"].error or "")


def test_builtin_devctl_command_runs(make_runner: Factory, tmp_path: Path) -> None:
    data = {"steps": [{"name": "say", "command": "echo", "params": {"message": "hi there"}}]}
    result = run_workflow(data, make_runner(), tmp_path)
    assert result.success
    assert "hi there" in (result.steps["say"].stdout or "")


def test_reused_steps_are_not_run_again_and_feed_templates(tmp_path: Path) -> None:
    """--resume: an earlier run's succeeded steps keep their outputs; everything else runs again."""
    from devctl_dist.core.results import StepResult as Earlier
    from devctl_dist.runners.memory import InMemoryRunner
    from devctl_dist.workflows.engine import WorkflowEngine
    from devctl_dist.workflows.loader import load_workflow_text
    from tests.workflows.virtual_time import run_virtual

    text = """
steps:
  - {name: build, command: "!make"}
  - {name: test, command: "!make test", depends_on: [build]}
  - {name: ship, command: "!echo {{ results['build'].stdout }}", depends_on: [test]}
"""
    earlier = {
        "build": Earlier(name="build", success=True, status=StepStatus.SUCCEEDED, stdout="v1.2"),
        "test": Earlier(name="test", success=False, status=StepStatus.FAILED, exit_code=1),
    }
    runner = InMemoryRunner()
    engine = WorkflowEngine(load_workflow_text(text, "w.yaml"), runner=runner, reuse=earlier)
    result = run_virtual(engine.run_async())
    assert result.success
    assert runner.started == ["test", "ship"]
    assert result.steps["build"].reused and result.steps["build"].stdout == "v1.2"
    assert not result.steps["test"].reused


def test_infrastructure_failure_stops_the_whole_run(tmp_path: Path) -> None:
    """A runner that loses its broker fails that step and stops everything else; the result says why."""
    from devctl_dist.core.exceptions import BrokerUnavailableError
    from devctl_dist.runners.base import OutputSink, StepOutcome, StepSpec
    from devctl_dist.runners.memory import InMemoryRunner, Script
    from devctl_dist.workflows.engine import WorkflowEngine
    from devctl_dist.workflows.loader import load_workflow_text
    from tests.workflows.virtual_time import run_virtual

    class LosesBroker(InMemoryRunner):
        async def run(self, spec: StepSpec, output: OutputSink | None = None) -> StepOutcome:
            if spec.name == "lost":
                raise BrokerUnavailableError("lost the broker redis://h:6379/0 during the run")
            return await super().run(spec, output)

    text = """
steps:
  - parallel:
      on_failure: continue
      steps:
        - {name: long, command: "!sleep 100"}
        - {name: lost, command: "!true"}
  - {name: after, command: "!true"}
on_failure:
  - {name: notify, command: "!true"}
"""
    runner = LosesBroker({"long": [Script(duration=100)]})
    result = run_virtual(WorkflowEngine(load_workflow_text(text, "w.yaml"), runner=runner).run_async())
    assert not result.success and not result.interrupted
    assert result.fault == "lost the broker redis://h:6379/0 during the run"
    assert result.steps["lost"].status is StepStatus.FAILED
    assert result.steps["long"].status is StepStatus.CANCELLED  # even under on_failure: continue
    assert result.steps["after"].status is StepStatus.SKIPPED
    assert "notify" not in runner.started  # hooks do not run on a run that lost its infrastructure
