"""WorkflowEngine: wires one run together; every scheduling decision is the scheduler's.

It builds the run state (runner, renderer, listeners, limits), runs the main
group (a sequence or a DAG) and then the ``on_success``/``on_failure`` hooks,
turns SIGINT/SIGTERM into an interrupt that kills every running step, and
makes sure every step ends with a final state (no silently lost step).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from devctl_dist.core.events import EventBus, RunListener
from devctl_dist.core.exceptions import RunInterrupted
from devctl_dist.core.results import RunResult, StepResult, StepStatus
from devctl_dist.runners.base import StepRunner
from devctl_dist.workflows.capacity import Capacity
from devctl_dist.workflows.parallel import INTERRUPTED, ParallelExecutor
from devctl_dist.workflows.run_state import RunState, skipped
from devctl_dist.workflows.schema import WorkflowSchema
from devctl_dist.workflows.templating import TemplateRenderer
from devctl_dist.workflows.validation import check, iter_steps, validate_workflow

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
        reuse: Mapping[str, StepResult] | None = None,
    ) -> None:
        """``reuse``: results of an earlier run of this workflow; its succeeded steps are not run again."""
        checked = check(workflow)
        self.workflow, self.graph = checked.workflow, checked.graph
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
        self.reuse = dict(reuse or {})
        self.signal: int | None = None
        self._main: asyncio.Task[Any] | None = None
        self.state: RunState  # created in run_async: everything loop-bound belongs to the running loop
        self.executor: ParallelExecutor | None = None

    @property
    def mode(self) -> str:
        if self.workflow.is_dag:
            return "dag"
        return "sequential" if self.workflow.is_sequential else "parallel"

    def run(self) -> RunResult:
        """Run to completion; SIGINT/SIGTERM interrupt the run and it returns ``interrupted``."""
        with _fewer_gc_passes():
            return asyncio.run(self._run_with_signals())

    async def _run_with_signals(self) -> RunResult:
        loop = asyncio.get_running_loop()
        installed = []
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(signum, self.interrupt, signum)
                installed.append(signum)
            except (NotImplementedError, RuntimeError, ValueError):  # not the main thread
                pass
        self._main = asyncio.current_task()
        try:
            return await self.run_async()
        finally:
            for signum in installed:
                loop.remove_signal_handler(signum)

    def interrupt(self, signum: int = signal.SIGINT) -> None:
        """Stop the run like ``fail_all``: running steps are killed, the rest skipped."""
        if self.signal is None:
            self.signal = signum
        if self.executor is not None:
            self.executor.interrupt()
        elif self._main is not None:
            self._main.cancel()  # still starting the runner

    async def run_async(self) -> RunResult:
        """Run the workflow on the current loop; an interrupt yields an ``interrupted`` result."""
        runner = self.runner or _default_runner()
        events = EventBus(self.listeners)
        renderer = TemplateRenderer(self.variables, {**os.environ, **self.workflow.env})
        env = {k: renderer.render(v, step="env") if "{" in v else v for k, v in self.workflow.env.items()}
        capacity = Capacity(self.config.max_concurrent, self.config.rate_limit)
        self.state = RunState(
            self.run_id, runner, renderer, events, env, capacity, cwd=self.cwd, reuse=self.reuse
        )
        result = RunResult(self.workflow.name, self.run_id, False, started_at=time.time(), mode=self.mode)
        names = [s.display_name for s in iter_steps(self.workflow) if not s.is_block]
        await self._start_runner(runner)  # an unreachable broker fails here, before any output
        executor = self.executor = ParallelExecutor(self.state, self.config)
        events.run_started(self.workflow.name, self.run_id, self.mode, names)
        try:
            result.success = await self._run_main(executor)
            hooks = self.workflow.on_success if result.success else self.workflow.on_failure
            if hooks and self.signal is None and self.state.fault is None:
                result.success = await executor.execute_sequence(hooks) and result.success
        except asyncio.CancelledError:  # cancelled from outside: the groups already stopped their steps
            result.success = False
            self.signal = self.signal or signal.SIGINT
        finally:
            await runner.close()
        if self.signal is not None:
            result.interrupted, result.signal, result.success = True, self.signal, False
        if self.state.fault is not None:
            result.fault, result.success = str(self.state.fault), False
        return self._finalize(result)

    async def _start_runner(self, runner: StepRunner) -> None:
        try:
            await runner.start()
        except BaseException as error:
            await runner.close()
            if isinstance(error, asyncio.CancelledError):
                raise RunInterrupted("interrupted before the run started") from None
            raise

    async def _run_main(self, executor: ParallelExecutor) -> bool:
        if self.workflow.is_dag:
            return (await executor.run_dag(self.graph)).success
        return await executor.execute_sequence(self.workflow.steps)

    def _finalize(self, result: RunResult) -> RunResult:
        """Give every step a final state (a safety net: the scheduler already did), then announce."""
        reason = INTERRUPTED if result.interrupted else "not reached"
        for record in list(self.state.live.values()):
            record.status, record.error = StepStatus.CANCELLED, reason
            record.ended_at = time.time()
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
        result.blocks = list(self.executor.blocks) if self.executor is not None else []
        result.ended_at = time.time()
        self.state.events.run_finished(result)
        return result


@contextlib.contextmanager
def _fewer_gc_passes() -> Iterator[None]:
    """A run makes many long-lived objects (results, records); full GC passes over them cost
    about 40 % of the scheduler's time at 10,000 steps. Freeze what exists and collect young
    objects less often; restored afterwards."""
    thresholds = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(max(thresholds[0], 20_000), max(thresholds[1], 20), max(thresholds[2], 50))
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()


def _default_runner() -> StepRunner:
    from devctl_dist.runners.local import LocalRunner

    return LocalRunner()


def _slug(name: str) -> str:
    cleaned = "".join(ch if ch.isalnum() else "-" for ch in name.lower()).strip("-")
    return cleaned[:40] or "run"
