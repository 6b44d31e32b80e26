"""The scheduler: parallel blocks and dependency graphs over a ``StepRunner``.

One algorithm serves both: a block is a group of nodes without edges, a DAG a
group with edges. Nodes start as soon as their dependencies succeeded; the
group's failure policy decides what a failure does to the others:

- ``fail_all``: cancel running nodes (their processes die), skip the rest;
- ``complete_running``: start nothing new, let running nodes finish;
- ``continue``: independent nodes go on; dependents of a failure are skipped.

Concurrency slots, the rate limiter and the attempts live in
``step_executor``; this module never prints (it emits events).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from devctl_dist.workflows.graph import DependencyGraph
from devctl_dist.workflows.results import ParallelBlockResult, StepResult, StepStatus
from devctl_dist.workflows.schema import ParallelBlockSchema, ParallelConfigSchema, WorkflowStepSchema
from devctl_dist.workflows.step_executor import OPEN, Admission, RunState, StepExecutor, skipped

if TYPE_CHECKING:
    from devctl_dist.workflows.engine import WorkflowEngine

log = logging.getLogger(__name__)

FailurePolicy = Literal["fail_all", "continue", "complete_running"]
_FAILURES = (StepStatus.FAILED, StepStatus.TIMED_OUT, StepStatus.CANCELLED)


@dataclass
class Group:
    """Nodes scheduled together, with their edges and failure rules."""

    label: str | None
    nodes: dict[str, WorkflowStepSchema]
    deps: Mapping[str, Collection[str]]
    policy: FailurePolicy
    timeout: float | None = None
    admission: Admission = OPEN
    base_allowed: frozenset[str] | None = None
    dag: bool = False
    cap: asyncio.Semaphore | None = None


class Ancestry(Collection[str]):
    """The results a DAG step may read: its ancestors (computed only when asked)."""

    def __init__(self, name: str, deps: Mapping[str, Collection[str]], base: frozenset[str]) -> None:
        self._name, self._deps, self._base = name, deps, base
        self._cache: set[str] | None = None

    def _all(self) -> set[str]:
        if self._cache is None:
            seen: set[str] = set()
            stack = list(self._deps.get(self._name, ()))
            while stack:
                node = stack.pop()
                if node not in seen:
                    seen.add(node)
                    stack.extend(self._deps.get(node, ()))
            self._cache = seen | self._base
        return self._cache

    def __contains__(self, item: object) -> bool:
        return item in self._all()

    def __iter__(self) -> Iterator[str]:
        return iter(self._all())

    def __len__(self) -> int:
        return len(self._all())


class ParallelExecutor:
    """Runs parallel blocks and DAGs under the run-wide limits of ``config``."""

    def __init__(self, engine: WorkflowEngine, config: ParallelConfigSchema) -> None:
        self.engine = engine
        self.config = config
        self.state: RunState = engine.state
        self.semaphore = self.state.slots
        self.rate_limiter = self.state.limiter
        self.fail_fast = config.fail_fast
        self.steps = StepExecutor(self.state)
        self.blocks: list[ParallelBlockResult] = []
        self.block_names: set[str] = set()

    async def execute_parallel_block(
        self,
        block: ParallelBlockSchema,
        *,
        name: str | None = None,
        allowed: frozenset[str] | None = None,
        admission: Admission = OPEN,
    ) -> ParallelBlockResult:
        """Run a block's steps concurrently under its cap, timeout and failure mode."""
        label = name or block.name or "parallel block"
        nodes = {step.display_name: step for step in block.steps}
        cap = None if block.max_concurrent is None else asyncio.Semaphore(block.max_concurrent)
        group = Group(
            label,
            nodes,
            {n: s.depends_on for n, s in nodes.items()},
            block.on_failure,
            block.timeout,
            admission,
            allowed,
            dag=allowed is not None,
            cap=cap,
        )
        self.block_names.add(label)
        self.state.events.block_started(label, list(nodes))
        started = time.time()
        try:
            outcome, timed_out = await self._run_group(group)
        except asyncio.CancelledError:  # an outer fail_all, fail_fast or Ctrl-C: still report the block
            steps = [self.state.results.get(n) or skipped(n, "run cancelled", label) for n in nodes]
            result = _block_result(self.state, label, steps, False, time.time() - started)
            result.status, result.success = StepStatus.CANCELLED, False
            self.blocks.append(result)
            self.state.events.block_finished(result)
            raise
        result = _block_result(
            self.state, label, [outcome[n] for n in nodes], timed_out, time.time() - started
        )
        self.blocks.append(result)
        self.state.events.block_finished(result)
        return result

    async def execute_dag(self, graph: DependencyGraph) -> dict[str, StepResult]:
        """Run a validated graph: each node starts when all its dependencies succeeded."""
        nodes = {name: graph.steps[name] for name in graph.order()}
        policy: FailurePolicy = "fail_all" if self.fail_fast else "continue"
        group = Group(None, nodes, graph.dependencies, policy, base_allowed=frozenset(), dag=True)  # type: ignore[arg-type]
        self.state.events.block_started("dag", list(nodes))
        started = time.time()
        outcome, _ = await self._run_group(group)
        result = _block_result(self.state, "dag", [outcome[n] for n in nodes], False, time.time() - started)
        self.state.events.block_finished(result)
        return outcome

    async def execute_node(
        self,
        step: WorkflowStepSchema,
        *,
        block: str | None,
        allowed: Collection[str] | None,
        admission: Admission = OPEN,
    ) -> StepResult:
        """One node of a sequence, block or DAG: a command step or a nested block.

        Never raises but for cancellation: an unexpected error becomes a failed
        result, so no step is ever lost.
        """
        try:
            if step.parallel is None:
                return await self.steps.execute(step, block=block, allowed=allowed, admission=admission)
            return await self._execute_block_node(step, block=block, allowed=allowed, admission=admission)
        except asyncio.CancelledError:
            raise
        except Exception as error:  # a runner or broker fault must not orphan the other steps
            log.exception("step %s failed inside devctl", step.display_name)
            return StepResult(
                name=step.display_name,
                success=False,
                status=StepStatus.FAILED,
                block=block,
                error=f"{type(error).__name__}: {error}",
            )

    async def _execute_block_node(
        self,
        step: WorkflowStepSchema,
        *,
        block: str | None,
        allowed: Collection[str] | None,
        admission: Admission,
    ) -> StepResult:
        assert step.parallel is not None
        name = step.display_name
        verdict = self.steps.check_condition(step, block, allowed)
        if verdict is not None:
            return verdict
        frozen = None if allowed is None else frozenset(allowed)
        result = await self.execute_parallel_block(
            step.parallel, name=name, allowed=frozen, admission=admission
        )
        return StepResult(
            name=name,
            success=result.success,
            status=result.status,
            duration=result.duration,
            block=block,
            error=None if result.success else f"block '{name}' {result.status.value}",
        )

    async def _run_group(self, group: Group) -> tuple[dict[str, StepResult], bool]:
        run = _GroupRun(self, group)
        try:
            return await run.drive()
        except asyncio.CancelledError:
            await run.cancel_all(StepStatus.CANCELLED, "run cancelled")
            run.skip_rest("run cancelled")
            raise


class _GroupRun:
    """The mutable state of one group while it runs."""

    def __init__(self, executor: ParallelExecutor, group: Group) -> None:
        self.executor, self.group, self.state = executor, group, executor.state
        self.index = {name: i for i, name in enumerate(group.nodes)}
        self.waiting = {name: len(group.deps.get(name, ())) for name in group.nodes}
        self.dependents: dict[str, list[str]] = {name: [] for name in group.nodes}
        for name in group.nodes:
            for dep in group.deps.get(name, ()):
                if dep in self.dependents:
                    self.dependents[dep].append(name)
        self.ready = [name for name in group.nodes if self.waiting[name] == 0]
        self.tasks: dict[asyncio.Task[StepResult], str] = {}
        self.finished: list[asyncio.Task[StepResult]] = []
        self.wakeup = asyncio.Event()
        self.outcome: dict[str, StepResult] = {}
        self.stop_reason: str | None = None
        self._stopping = False
        self.admission = group.admission.nested(group.cap, self._gate, self._note_result)

    def _gate(self) -> str | None:
        return None if self.stop_reason is None else f"not started: {self.stop_reason}"

    def _note_result(self, result: StepResult) -> None:
        """Stop new starts the moment a step fails, before its slot frees (see ``Admission``)."""
        if self.stop_reason is None and self.group.policy != "continue" and result.status in _FAILURES:
            self.stop_reason = f"'{result.name}' {result.status.value}"

    async def drive(self) -> tuple[dict[str, StepResult], bool]:
        loop = asyncio.get_running_loop()
        deadline = None if self.group.timeout is None else loop.time() + self.group.timeout
        while True:
            if self.stop_reason is None:
                self._start_ready()
            if not self.tasks:
                break
            wait = None if deadline is None else max(0.0, deadline - loop.time())
            done = await self._next_done(wait)
            if not done:
                reason = f"block timed out after {self.group.timeout:g}s"
                await self.cancel_all(StepStatus.TIMED_OUT, reason)
                self.skip_rest(reason)
                return self.outcome, True
            for task in sorted(done, key=lambda t: self.index[self.tasks[t]]):
                if task in self.tasks:  # an earlier settle may have cancelled and recorded it
                    await self._settle(self.tasks.pop(task), task.result())
        self.skip_rest(self._gate() or "not reached")
        return self.outcome, False

    async def _next_done(self, timeout: float | None) -> list[asyncio.Task[StepResult]]:
        """Tasks finished since last asked; O(1) per completion, unlike ``asyncio.wait`` over all tasks."""
        if not self.finished:
            try:
                await asyncio.wait_for(self.wakeup.wait(), timeout)
            except TimeoutError:
                return []
        self.wakeup.clear()
        done, self.finished = self.finished, []
        return done

    def _on_task_done(self, task: asyncio.Task[StepResult]) -> None:
        self.finished.append(task)
        self.wakeup.set()

    def _start_ready(self) -> None:
        self.ready.sort(key=self.index.__getitem__)
        for name in self.ready:
            step = self.group.nodes[name]
            coro = self.executor.execute_node(
                step, block=self.group.label, allowed=self._allowed(name), admission=self.admission
            )
            task = asyncio.ensure_future(coro)
            task.add_done_callback(self._on_task_done)
            self.tasks[task] = name
        self.ready.clear()

    def _allowed(self, name: str) -> Collection[str] | None:
        if not self.group.dag:
            return None
        return Ancestry(name, self.group.deps, self.group.base_allowed or frozenset())

    async def _settle(self, name: str, result: StepResult) -> None:
        self.outcome[name] = self._finish(result)
        if result.status.ok:
            for child in self.dependents[name]:
                self.waiting[child] -= 1
                if self.waiting[child] == 0 and child not in self.outcome:
                    self.ready.append(child)
            return
        verb = "was skipped" if result.status is StepStatus.SKIPPED else result.status.value
        self._skip_dependents(name, f"dependency '{name}' {verb}", benign=name in self.state.benign_skips)
        if result.status not in _FAILURES or self.group.policy == "continue" or self._stopping:
            return
        self._stopping = True
        self.stop_reason = self.stop_reason or f"'{name}' {result.status.value}"
        if self.group.policy == "fail_all":
            await self.cancel_all(StepStatus.CANCELLED, f"cancelled: {self.stop_reason}")
        else:
            await self.cancel_all(StepStatus.SKIPPED, f"not started: {self.stop_reason}", only_waiting=True)

    def _skip_dependents(self, name: str, reason: str, benign: bool) -> None:
        for child in self.dependents[name]:
            if child not in self.outcome:
                if benign:
                    self.state.benign_skips.add(child)
                self.outcome[child] = self._finish(skipped(child, reason, self.group.label))
                self._skip_dependents(child, f"dependency '{child}' was skipped", benign)

    async def cancel_all(self, status: StepStatus, reason: str, only_waiting: bool = False) -> None:
        """Cancel running (or only not-yet-started) nodes and record why."""
        targets = [t for t, n in self.tasks.items() if not (only_waiting and self._has_started(n))]
        for task in targets:
            task.cancel()
        settled = await asyncio.gather(*targets, return_exceptions=True)
        for task, value in zip(targets, settled, strict=True):
            name = self.tasks.pop(task)
            if isinstance(value, StepResult):
                self.outcome[name] = self._finish(value)
            else:
                self.outcome[name] = self._finish(self._interrupted(name, status, reason))

    def _has_started(self, name: str) -> bool:
        return name in self.state.live or self.group.nodes[name].is_block

    def _interrupted(self, name: str, status: StepStatus, reason: str) -> StepResult:
        record = self.state.live.get(name)
        if record is None:
            done = self.state.results.get(name)
            return done if done is not None else skipped(name, reason, self.group.label)
        record.status = status
        record.error = reason
        record.ended_at = time.time()
        record.duration = record.ended_at - (record.started_at or record.ended_at)
        return record

    def skip_rest(self, reason: str) -> None:
        for name in self.group.nodes:
            if name not in self.outcome:
                self.outcome[name] = self._finish(skipped(name, reason, self.group.label))

    def _finish(self, result: StepResult) -> StepResult:
        if self.group.nodes.get(result.name) is not None and self.group.nodes[result.name].is_block:
            self.state.results.setdefault(result.name, result)
            return self.state.results[result.name]
        return self.state.finish(result)


def _block_result(
    state: RunState, label: str, steps: list[StepResult], timed_out: bool, duration: float
) -> ParallelBlockResult:
    failed = [s for s in steps if s.status in (StepStatus.FAILED, StepStatus.TIMED_OUT, StepStatus.CANCELLED)]
    succeeded = [s for s in steps if s.status.ok]
    success = not timed_out and all(state.is_benign(s) for s in steps)
    status = StepStatus.TIMED_OUT if timed_out else StepStatus.SUCCEEDED if success else StepStatus.FAILED
    return ParallelBlockResult(label, success, steps, len(failed), len(succeeded), status, duration)
