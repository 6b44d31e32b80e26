"""The scheduler: the one place that decides what starts, what is cancelled and what is skipped.

A *group* is a set of nodes (command steps or nested blocks) with edges and a
failure policy. The whole workflow is one: a sequence is a group whose nodes
run one at a time and whose first failure stops the rest; a parallel block is
a group under its own cap and timeout; a DAG is a group with edges. Which node
may start is the graph's business (``graph.Frontier``); this module owns
policies, deadlines and cancellation; when a step may take a slot is
``capacity.py``'s. Every decision is made in a synchronous callback (a step
ended, a deadline passed, an interrupt), so no two decisions interleave.

Policies, on a node's failure (``StepStatus.is_failure``):

- ``fail_all``: cancel running nodes (their processes die), skip the rest;
- ``complete_running`` and ``sequence``: start nothing new, let running nodes finish;
- ``continue``: independent nodes go on; dependents of a failure are skipped.

This module never prints: it emits events.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

from devctl_dist.core.exceptions import DevctlError
from devctl_dist.core.results import ParallelBlockResult, StepResult, StepStatus
from devctl_dist.workflows.capacity import Cap
from devctl_dist.workflows.graph import Ancestry, DependencyGraph, Frontier
from devctl_dist.workflows.run_state import RunState, skipped
from devctl_dist.workflows.schema import ParallelBlockSchema, ParallelConfigSchema, WorkflowStepSchema
from devctl_dist.workflows.step_executor import StepRun, Stop, failed_before_start, prepare_spec

Policy = Literal["fail_all", "continue", "complete_running", "sequence"]
INTERRUPTED = "run interrupted"


@dataclass
class Group:
    """What a group is: its nodes, edges, policy and limits (no run state)."""

    label: str | None
    nodes: dict[str, WorkflowStepSchema]
    deps: Mapping[str, Sequence[str]]
    policy: Policy
    node_cap: int | None = None
    cap: Cap | None = None
    timeout: float | None = None
    visible_base: frozenset[str] | None = None  # None: every result is visible (sequences)
    event_label: str | None = None  # block_started/finished under this name; None: no events
    record: bool = False  # listed in ``RunResult.blocks``
    parent_caps: tuple[Cap, ...] = field(default=())

    @property
    def caps(self) -> tuple[Cap, ...]:
        return self.parent_caps if self.cap is None else (*self.parent_caps, self.cap)


class GroupRun:
    """One group while it runs. ``on_done`` receives its block result exactly once."""

    def __init__(
        self, executor: ParallelExecutor, group: Group, on_done: Callable[[ParallelBlockResult], None]
    ):
        self.executor, self.group, self.state = executor, group, executor.state
        self.on_done = on_done
        self.frontier = Frontier({name: group.deps.get(name, ()) for name in group.nodes})
        self.active: dict[str, StepRun | GroupRun] = {}
        self.waiting: deque[str] = deque()
        self.outcome: dict[str, StepResult] = {}
        self.benign: set[str] = set()  # skipped only because a condition was false (or a dependency's was)
        self.stop: Stop | None = None  # set once: by a failure, the deadline or the parent
        self.why: Literal["failure", "timeout", "parent"] | None = None
        self._inbox: deque[tuple[str, StepResult]] = deque()
        self._busy = False
        self._finished = False
        self._timer: asyncio.TimerHandle | None = None
        self._started_at = time.time()

    # ------------------------------------------------------------ entry points (callbacks)

    def start(self) -> None:
        group = self.group
        if group.event_label is not None:
            self.state.events.block_started(group.event_label, list(group.nodes))
        if group.timeout is not None:
            self._timer = asyncio.get_running_loop().call_later(group.timeout, self._deadline)
        self.frontier.prepare()
        self._run(self._launch_ready)

    def cancel(self, stop: Stop) -> None:
        """The parent stops this group: running nodes end as ``stop.status``, the rest are skipped."""
        self._run(lambda: self._halt(stop, "parent", cancel_running=True))

    def _deadline(self) -> None:
        self._timer = None
        reason = f"block '{self.group.label}' timed out after {self.group.timeout:g}s"
        self._run(
            lambda: self._halt(Stop(StepStatus.TIMED_OUT, reason, reason), "timeout", cancel_running=True)
        )
        self.state.capacity.dispatch()

    def _post(self, name: str, result: StepResult) -> None:
        """A node reached its final result."""
        self._inbox.append((name, result))
        self._run(None)

    def _run(self, action: Callable[[], None] | None) -> None:
        """Apply one event and everything it causes, one node result at a time (never re-entrantly)."""
        if action is not None and self._busy:
            raise RuntimeError("scheduler re-entered")  # a bug: every entry point is a callback
        if self._busy:
            return
        self._busy = True
        try:
            if action is not None:
                action()
            while self._inbox:
                name, result = self._inbox.popleft()
                self._settle(name, result)
                self._launch_ready()
        finally:
            self._busy = False
        self._check_done()

    # ------------------------------------------------------------ decisions

    def _launch_ready(self) -> None:
        self.waiting.extend(self.frontier.get_ready())
        cap = self.group.node_cap
        while self.waiting and self.stop is None and (cap is None or len(self.active) < cap):
            self._launch(self.waiting.popleft())
            if self._inbox:  # it ended at once: apply that before starting anything else
                return

    def _launch(self, name: str) -> None:
        step = self.group.nodes[name]
        visible = self._visible(name)
        verdict = self._condition(step, visible)
        if verdict is not None:
            self._ended_at_once(step, verdict)
            return
        if step.parallel is not None:
            child = GroupRun(
                self.executor, self._child_group(step, visible), lambda r: self._block_done(name, r)
            )
            self.active[name] = child
            child.start()
            return
        earlier = self.state.reuse.get(name)
        if earlier is not None and earlier.status is StepStatus.SUCCEEDED:  # resumed run: not again
            self._ended_at_once(step, replace(earlier, block=self.group.label, reused=True))
            return
        try:
            spec = prepare_spec(self.state, step, visible)
        except DevctlError as error:
            self._ended_at_once(step, failed_before_start(step, self.group.label, str(error)))
            return
        self.active[name] = StepRun(
            self.state,
            step,
            spec,
            block=self.group.label,
            caps=self.group.caps,
            on_done=lambda result: self._post(name, result),
        )

    def _settle(self, name: str, result: StepResult) -> None:
        self.active.pop(name, None)
        self.outcome[name] = result
        for child, dep in self.frontier.done(name, result.status.ok):
            if dep in self.benign:
                self.benign.add(child)
            verb = (
                "was skipped"
                if self.outcome[dep].status is StepStatus.SKIPPED
                else self.outcome[dep].status.value
            )
            self._skip(child, f"dependency '{dep}' {verb}")
        if result.status.is_failure and self.stop is None and self.group.policy != "continue":
            cause = f"'{name}' {result.status.value}"
            stop = Stop(StepStatus.CANCELLED, f"cancelled: {cause}", f"not started: {cause}")
            self._halt(stop, "failure", cancel_running=self.group.policy == "fail_all")

    def _halt(
        self, stop: Stop, why: Literal["failure", "timeout", "parent"], *, cancel_running: bool
    ) -> None:
        """Start nothing more; skip what has not started; cancel what runs when asked to."""
        if self._finished:
            return
        if self.why is None or (self.why == "failure" and why != "failure"):
            self.stop, self.why = stop, why  # a deadline or the parent outranks an earlier failure
        for node in list(self.active.values()):
            if cancel_running or (isinstance(node, StepRun) and not node.started):
                node.cancel(stop)
        for name in self.group.nodes:
            if name not in self.outcome and name not in self.active:
                self.frontier.skip(name)
                self._skip(name, stop.pending)
        self.waiting.clear()

    def _condition(self, step: WorkflowStepSchema, visible: Collection[str] | None) -> StepResult | None:
        """``None`` when the node may run; else its final result (skipped, or failed on a bad condition)."""
        if step.condition is None:
            return None
        try:
            go = self.state.renderer.judge(
                step.condition, step=step.display_name, results=self.state.results, allowed=visible
            )
        except DevctlError as error:
            return failed_before_start(step, self.group.label, str(error))
        if go:
            return None
        self.benign.add(step.display_name)
        reason = f"condition is false: {step.condition}"
        if step.parallel is not None:
            self._skip_inside(step, reason)
        return skipped(step.display_name, reason, self.group.label)

    # ------------------------------------------------------------ bookkeeping

    def _ended_at_once(self, step: WorkflowStepSchema, result: StepResult) -> None:
        """A node decided without running (condition, bad template): record it, then settle it."""
        if step.parallel is None:
            result = self.state.finish(result)
        else:
            self.state.finish_block(result)
        self._post(step.display_name, result)

    def _skip(self, name: str, reason: str) -> None:
        """Record a node that will never start (and, for a block, every step inside it)."""
        self.outcome[name] = self._skip_tree(self.group.nodes[name], reason, self.group.label)

    def _skip_inside(self, step: WorkflowStepSchema, reason: str) -> None:
        assert step.parallel is not None
        for inner in step.parallel.steps:
            self._skip_tree(inner, reason, step.display_name)

    def _skip_tree(self, step: WorkflowStepSchema, reason: str, label: str | None) -> StepResult:
        result = skipped(step.display_name, reason, label)
        if step.parallel is None:
            return self.state.finish(result)
        self._skip_inside(step, reason)
        self.state.finish_block(result)
        return result

    def _block_done(self, name: str, block: ParallelBlockResult) -> None:
        error = None if block.success else f"block '{name}' {block.status.value}"
        result = StepResult(
            name=name,
            success=block.success,
            status=block.status,
            duration=block.duration,
            block=self.group.label,
            error=error,
        )
        self.state.finish_block(result)
        self._post(name, result)

    def _check_done(self) -> None:
        if self._finished or self._busy or self.active or len(self.outcome) < len(self.group.nodes):
            return
        self._finished = True
        if self._timer is not None:
            self._timer.cancel()
        group = self.group
        steps = [self.outcome[name] for name in group.nodes]
        success = self.why is None or self.why == "failure"
        success = success and all(r.status.ok or r.name in self.benign for r in steps)
        if self.why == "timeout" or (
            self.why == "parent" and self.stop and self.stop.status is StepStatus.TIMED_OUT
        ):
            status = StepStatus.TIMED_OUT
        elif self.why == "parent":
            status = StepStatus.CANCELLED
        else:
            status = StepStatus.SUCCEEDED if success else StepStatus.FAILED
        result = ParallelBlockResult(
            group.event_label or group.label, success, steps, status, time.time() - self._started_at
        )
        if group.record:
            self.executor.blocks.append(result)
        if group.event_label is not None:
            self.state.events.block_finished(result)
        self.on_done(result)

    def _visible(self, name: str) -> Collection[str] | None:
        base = self.group.visible_base
        return None if base is None else Ancestry(name, self.group.deps, base)

    def _child_group(self, step: WorkflowStepSchema, visible: Collection[str] | None) -> Group:
        block = step.parallel
        assert block is not None
        label = step.display_name
        nodes = {inner.display_name: inner for inner in block.steps}
        return Group(
            label=label,
            nodes=nodes,
            deps={n: s.depends_on for n, s in nodes.items()},
            policy=block.on_failure,
            cap=None if block.max_concurrent is None else Cap(block.max_concurrent, label),
            timeout=block.timeout,
            visible_base=None if visible is None else frozenset(visible),
            event_label=label,
            record=True,
            parent_caps=self.group.caps,
        )


class ParallelExecutor:
    """Runs sequences, parallel blocks and DAGs of one run under its run-wide limits."""

    def __init__(self, state: RunState, config: ParallelConfigSchema) -> None:
        self.state = state
        self.config = config
        self.fail_fast = config.fail_fast
        self.blocks: list[ParallelBlockResult] = []
        self._roots: list[GroupRun] = []
        state.on_fault = lambda error: self.interrupt(f"run stopped: {error}")

    async def execute_sequence(self, steps: Sequence[WorkflowStepSchema]) -> bool:
        """The original engine's rule: one step at a time; a failure stops the rest, allowed ones go on."""
        nodes = {step.display_name: step for step in steps}
        group = Group(None, nodes, {}, "sequence", node_cap=1)
        return (await self._run_root(group)).success

    async def execute_parallel_block(
        self, block: ParallelBlockSchema, *, name: str | None = None
    ) -> ParallelBlockResult:
        """Run one block on its own (the seed's API); inside a workflow, blocks are nodes of a group."""
        label = name or block.name or "parallel block"
        wrapper = WorkflowStepSchema(name=label, parallel=block)
        await self.execute_sequence([wrapper])
        return self.blocks[-1]

    async def execute_dag(self, graph: DependencyGraph) -> dict[str, StepResult]:
        """Run a validated graph: each node starts once all its dependencies succeeded."""
        return {step.name: step for step in (await self.run_dag(graph)).steps}

    async def run_dag(self, graph: DependencyGraph) -> ParallelBlockResult:
        """``execute_dag`` with the group's verdict (a condition-false skip does not fail it)."""
        nodes: dict[str, WorkflowStepSchema] = {name: graph.steps[name] for name in graph.order()}  # type: ignore[misc]
        deps = {name: list(step.depends_on) for name, step in nodes.items()}
        policy: Policy = "fail_all" if self.fail_fast else "continue"
        return await self._run_root(
            Group(None, nodes, deps, policy, visible_base=frozenset(), event_label="dag")
        )

    def interrupt(self, reason: str = INTERRUPTED) -> None:
        """Ctrl-C: cancel every running group like ``fail_all``; the awaiting calls then return."""
        stop = Stop(StepStatus.CANCELLED, reason, reason)
        for root in list(self._roots):
            root.cancel(stop)

    async def _run_root(self, group: Group) -> ParallelBlockResult:
        done: asyncio.Future[ParallelBlockResult] = asyncio.get_running_loop().create_future()
        root = GroupRun(self, group, done.set_result)
        self._roots.append(root)
        try:
            root.start()
            self.state.capacity.dispatch()
            try:
                return await asyncio.shield(done)
            except asyncio.CancelledError:  # the awaiting task was cancelled: stop the steps, then go
                root.cancel(Stop(StepStatus.CANCELLED, INTERRUPTED, INTERRUPTED))
                await done
                raise
        finally:
            self._roots.remove(root)
