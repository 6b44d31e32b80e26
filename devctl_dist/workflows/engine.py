"""WorkflowEngine: runs a whole workflow on a runner.

It picks the path (sequential, parallel blocks in a sequence, or DAG), runs the
``on_success``/``on_failure`` hook lists, turns Ctrl-C/SIGTERM into a
cancellation that kills every running step, and guarantees every step ends
with a final state (no silently lost step).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from devctl_dist.core.async_utils import RateLimiter
from devctl_dist.core.events import EventBus, RunListener
from devctl_dist.core.exceptions import RunInterrupted
from devctl_dist.runners.base import StepRunner
from devctl_dist.workflows.graph import DependencyGraph
from devctl_dist.workflows.parallel import ParallelExecutor
from devctl_dist.workflows.results import RunResult, StepStatus
from devctl_dist.workflows.schema import WorkflowSchema, WorkflowStepSchema
from devctl_dist.workflows.step_executor import RunState, skipped
from devctl_dist.workflows.templating import TemplateRenderer
from devctl_dist.workflows.validation import iter_steps, normalize, validate_workflow

__all__ = ["WorkflowEngine", "validate_workflow"]


class WorkflowEngine:
    """Runs one workflow; build a new engine per run."""

    def __init__(
        self,
        workflow: WorkflowSchema,
        *,
        runner: StepRunner | None = None,
        listeners: Sequence[RunListener] = (),
        variables: Mapping[str, Any] | None = None,
        max_concurrent: int | None = None,
        rate_limit: float | None = None,
        run_id: str | None = None,
        cwd: str | None = None,
    ) -> None:
        self.workflow = normalize(workflow)
        validate_workflow(self.workflow)
        config = self.workflow.parallel.model_copy()
        if max_concurrent is not None:
            config.max_concurrent = max_concurrent
        if rate_limit is not None:
            config.rate_limit = rate_limit
        self.config = config
        self.run_id = run_id or f"{_slug(self.workflow.name)}-{uuid.uuid4().hex[:8]}"
        self.variables = {**self.workflow.vars, **(variables or {})}
        self.listeners = list(listeners)
        self.runner = runner
        self.cwd = cwd
        self.state: RunState  # created in run_async: semaphores belong to the running loop
        self.executor: ParallelExecutor

    @property
    def mode(self) -> str:
        if self.workflow.is_dag:
            return "dag"
        return "sequential" if self.workflow.is_sequential else "parallel"

    def run(self) -> RunResult:
        """Run to completion; SIGINT/SIGTERM cancel the run and it returns ``interrupted``."""
        return asyncio.run(self._run_with_signals())

    async def _run_with_signals(self) -> RunResult:
        loop = asyncio.get_running_loop()
        main = asyncio.current_task()
        assert main is not None
        wanted = (signal.SIGINT, signal.SIGTERM)
        installed = []
        for signum in wanted:
            try:
                loop.add_signal_handler(signum, main.cancel)
                installed.append(signum)
            except (NotImplementedError, RuntimeError, ValueError):  # not the main thread
                pass
        try:
            return await self.run_async()
        finally:
            for signum in installed:
                loop.remove_signal_handler(signum)

    async def run_async(self) -> RunResult:
        """Run the workflow on the current loop; cancellation yields an ``interrupted`` result."""
        runner = self.runner or _default_runner()
        events = EventBus(self.listeners)
        renderer = TemplateRenderer(self.variables, {**os.environ, **self.workflow.env})
        env = {k: renderer.render(v, step="env") if "{" in v else v for k, v in self.workflow.env.items()}
        limiter = RateLimiter(self.config.rate_limit) if self.config.rate_limit else None
        self.state = RunState(
            self.run_id,
            runner,
            renderer,
            events,
            env,
            asyncio.Semaphore(self.config.max_concurrent),
            limiter,
            cwd=self.cwd,
        )
        self.executor = ParallelExecutor(self, self.config)
        result = RunResult(self.workflow.name, self.run_id, False, started_at=time.time(), mode=self.mode)
        names = [s.display_name for s in iter_steps(self.workflow) if not s.is_block]
        await self._start_runner(runner)  # an unreachable broker fails here, before any output
        events.run_started(self.workflow.name, self.run_id, self.mode, names)
        try:
            result.success = await self._run_main()
            hooks = self.workflow.on_success if result.success else self.workflow.on_failure
            if hooks:
                result.success = await self._run_sequence(hooks) and result.success
        except asyncio.CancelledError:
            result.interrupted = True
            result.success = False
        finally:
            await runner.close()
        return self._finalize(result)

    @staticmethod
    async def _start_runner(runner: StepRunner) -> None:
        try:
            await runner.start()
        except BaseException as error:
            await runner.close()
            if isinstance(error, asyncio.CancelledError):
                raise RunInterrupted("interrupted before the run started") from None
            raise

    async def _run_main(self) -> bool:
        if self.workflow.is_dag:
            graph = DependencyGraph(self.workflow.steps)
            outcome = await self.executor.execute_dag(graph)
            return all(self.state.is_benign(r) for r in outcome.values())
        return await self._run_sequence(self.workflow.steps)

    async def _run_sequence(self, steps: Sequence[WorkflowStepSchema]) -> bool:
        """The original engine's rule: a failing step stops the sequence unless its failure is allowed."""
        for index, step in enumerate(steps):
            result = await self.executor.execute_node(step, block=None, allowed=None)
            if not step.is_block:
                result = self.state.finish(result)
            else:
                self.state.results.setdefault(result.name, result)
            if not self.state.is_benign(result):
                for later in steps[index + 1 :]:
                    self.state.finish(
                        skipped(later.display_name, f"'{step.display_name}' {result.status.value}")
                    )
                return False
        return True

    def _finalize(self, result: RunResult) -> RunResult:
        """Give every step a final state, then announce the result."""
        reason = "run interrupted" if result.interrupted else "not reached"
        for record in list(self.state.live.values()):
            record.status, record.error = StepStatus.CANCELLED, reason
            record.ended_at = time.time()
            record.duration = record.ended_at - (record.started_at or record.ended_at)
            self.state.finish(record)
        for step in iter_steps(self.workflow):
            if step.is_block:
                continue
            name = step.display_name
            if name not in self.state.results:
                self.state.finish(skipped(name, reason))
            result.steps[name] = self.state.results[name]
        for hook in iter_steps(self.workflow, hooks_only=True):
            if not hook.is_block and hook.display_name in self.state.results:
                result.steps[hook.display_name] = self.state.results[hook.display_name]
        result.blocks = list(self.executor.blocks)
        result.ended_at = time.time()
        self.state.events.run_finished(result)
        return result


def _default_runner() -> StepRunner:
    from devctl_dist.runners.local import LocalRunner

    return LocalRunner()


def _slug(name: str) -> str:
    cleaned = "".join(ch if ch.isalnum() else "-" for ch in name.lower()).strip("-")
    return cleaned[:40] or "run"
