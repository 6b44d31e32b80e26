"""A reference model of DESIGN.md's semantics table, for the model-based test.

Written from the table, sharing no code with the scheduler: a discrete-event
simulation over exact (binary-fraction) times. Its rules, in the order they
apply, are the documented semantics (docs/semantics.md):

1. A group launches ready nodes in the order they became ready (declaration
   order among those ready together); a sequence launches one at a time. A node
   whose fate is known at launch (condition false) is settled before the next
   launch.
2. A launched command step waits in one run-wide first-come-first-served line;
   it is admitted when the run's cap and every enclosing block's cap have room
   (a step skips past others whose caps are full), after the consequences of the
   current event are applied. It keeps its caps until its last attempt is over.
3. A failure (failed, timed_out, cancelled) makes its group: ``fail_all`` cancel
   running nodes and skip the rest, ``complete_running`` / sequence skip what
   has not started, ``continue`` nothing; dependents of anything that did not
   succeed (or fail with ``on_failure: continue``) are skipped, with the reason.
4. A block deadline times out running steps and skips the rest; a cancelled
   step gives its caps back only once it is gone (after the current event).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


@dataclass
class Leaf:
    name: str
    outcomes: list[tuple[str, float]]  # per attempt: ("ok" | "fail" | "timeout", duration)
    retries: int = 0
    retry_delay: float = 0.0
    on_failure: str = "fail"
    condition: bool | None = None
    deps: list[str] = field(default_factory=list)


@dataclass
class Block:
    name: str
    children: list[Node]
    policy: str = "fail_all"
    max_concurrent: int | None = None
    timeout: float | None = None
    condition: bool | None = None
    deps: list[str] = field(default_factory=list)


Node = Leaf | Block


@dataclass
class Flow:
    nodes: list[Node]
    dag: bool
    fail_fast: bool = True
    max_concurrent: int = 10


@dataclass
class Verdict:
    """What the model predicts: per step (status, reason), starts, peak, exit code."""

    states: dict[str, tuple[str, str]]
    started: set[str]
    peak: int
    exit_code: int


def leaves(nodes: list[Node]) -> list[Leaf]:
    out: list[Leaf] = []
    for node in nodes:
        out.extend([node] if isinstance(node, Leaf) else leaves(node.children))
    return out


def fmt(seconds: float) -> str:
    return f"{seconds:g}"


class _Step:
    """A command step in the model: queued, running, delayed (between attempts), stopping, done."""

    def __init__(self, model: Model, leaf: Leaf, group: _Group) -> None:
        self.model, self.leaf, self.group = model, leaf, group
        self.caps = [*group.caps, model.run_cap]
        self.state = "queued"
        self.attempt = 0
        self.stop: tuple[str, str, str] | None = None
        model.line.append(self)

    def admit(self) -> None:
        for cap in self.caps:
            cap[0] += 1
        self.model.started.add(self.leaf.name)
        self.begin_attempt()

    def begin_attempt(self) -> None:
        self.attempt += 1
        self.state = "running"
        self.model.in_flight += 1
        self.model.peak = max(self.model.peak, self.model.in_flight)
        duration = self.leaf.outcomes[self.attempt - 1][1]
        self.model.at(self.model.t + duration, self, "end")

    def attempt_over(self) -> None:
        self.model.in_flight -= 1
        kind, _ = self.leaf.outcomes[self.attempt - 1]
        if kind == "ok" or self.attempt > self.leaf.retries:
            self.release()
            self.group.post(self.leaf.name, self.final(kind))
            return
        delay = min(self.leaf.retry_delay * 2 ** (self.attempt - 1), 60.0)
        if delay > 0:
            self.state = "delayed"
            self.model.at(self.model.t + delay, self, "retry")
        else:
            self.begin_attempt()

    def final(self, kind: str) -> tuple[str, str]:
        if kind == "ok":
            return ("succeeded", "")
        why = "exit code 1" if kind == "fail" else "timed out"
        if self.leaf.on_failure != "fail":
            return ("failed (allowed)", why)
        return ("failed" if kind == "fail" else "timed_out", why)

    def cancel(self, stop: tuple[str, str, str]) -> None:
        if self.state == "queued":
            self.model.line.remove(self)
            self.state = "done"
            self.group.post(self.leaf.name, ("skipped", stop[2]))
        elif self.state in ("running", "delayed"):
            if self.state == "running":
                self.model.in_flight -= 1
            self.state, self.stop = "stopping", stop
            self.model.timers = [e for e in self.model.timers if e[2] is not self]
            self.model.gone.append(self)

    def gone(self) -> None:
        assert self.stop is not None
        self.release()
        self.group.post(self.leaf.name, (self.stop[0], self.stop[1]))

    def release(self) -> None:
        self.state = "done"
        for cap in self.caps:
            cap[0] -= 1


class _Group:
    def __init__(
        self, model: Model, nodes: list[Node], policy: str, caps: list[list[int]], **kw: object
    ) -> None:
        self.model, self.nodes, self.policy, self.caps = model, nodes, policy, caps
        self.by_name = {n.name: n for n in nodes}
        self.one_at_a_time: bool = bool(kw.get("one_at_a_time", False))
        self.timeout = kw.get("timeout")
        self.label = kw.get("label")
        self.on_done = kw.get("on_done")
        self.outcome: dict[str, tuple[str, str]] = {}
        self.benign: set[str] = set()
        self.active: dict[str, _Step | _Group] = {}
        self.ready_line: deque[str] = deque()
        self.inbox: deque[tuple[str, tuple[str, str]]] = deque()
        self.stop: tuple[str, str, str] | None = None
        self.why: str | None = None
        self.busy = False
        self.finished = False
        self.unmet = {n.name: set(n.deps) for n in nodes}
        self.handed_out: set[str] = set()

    # events
    def start(self) -> None:
        if self.timeout is not None:
            self.model.at(self.model.t + float(self.timeout), self, "deadline")  # type: ignore[arg-type]
        self.run(self.launch)

    def deadline(self) -> None:
        reason = f"block '{self.label}' timed out after {fmt(float(self.timeout))}s"  # type: ignore[arg-type]
        self.run(lambda: self.halt(("timed_out", reason, reason), "timeout", True))

    def cancel(self, stop: tuple[str, str, str]) -> None:
        self.run(lambda: self.halt(stop, "parent", True))

    def post(self, name: str, result: tuple[str, str]) -> None:
        self.inbox.append((name, result))
        self.run(None)

    def run(self, action: object) -> None:
        if self.busy:
            return
        self.busy = True
        if action is not None:
            action()  # type: ignore[operator]
        while self.inbox:
            name, result = self.inbox.popleft()
            self.settle(name, result)
            self.launch()
        self.busy = False
        self.maybe_done()

    # rules
    def launch(self) -> None:
        newly = [n.name for n in self.nodes if not self.unmet[n.name] and n.name not in self.handed_out]
        self.handed_out.update(newly)
        self.ready_line.extend(n for n in newly if n not in self.outcome)
        while self.ready_line and self.stop is None and not (self.one_at_a_time and self.active):
            node = self.by_name[self.ready_line.popleft()]
            if node.condition is False:
                self.benign.add(node.name)
                self.model.skip_all(node, "condition is false: false")
                self.post(node.name, ("skipped", "condition is false: false"))
            elif isinstance(node, Leaf):
                self.active[node.name] = _Step(self.model, node, self)
            else:
                caps = self.caps + ([[0, node.max_concurrent]] if node.max_concurrent else [])
                child = _Group(
                    self.model,
                    node.children,
                    node.policy,
                    caps,
                    timeout=node.timeout,
                    label=node.name,
                    on_done=lambda st, n=node.name: self.block_over(n, st),
                )
                self.active[node.name] = child
                child.start()
            if self.inbox:
                return

    def settle(self, name: str, result: tuple[str, str]) -> None:
        self.active.pop(name, None)
        self.outcome[name] = result
        if isinstance(self.by_name[name], Leaf):
            self.model.states.setdefault(name, result)
        ok = result[0] in ("succeeded", "failed (allowed)")
        if ok:
            for node in self.nodes:
                self.unmet[node.name].discard(name)
        else:
            self.block_dependents(name)
        if (
            result[0] in ("failed", "timed_out", "cancelled")
            and self.stop is None
            and self.policy != "continue"
        ):
            cause = f"'{name}' {result[0]}"
            self.halt(
                ("cancelled", f"cancelled: {cause}", f"not started: {cause}"),
                "failure",
                self.policy == "fail_all",
            )

    def block_dependents(self, failed: str) -> None:
        spread = [failed]
        for parent in spread:
            for node in self.nodes:
                if parent in node.deps and node.name not in self.outcome and node.name not in self.active:
                    verb = "was skipped" if self.outcome[parent][0] == "skipped" else self.outcome[parent][0]
                    if parent in self.benign:
                        self.benign.add(node.name)
                    self.skip(node, f"dependency '{parent}' {verb}")
                    spread.append(node.name)

    def halt(self, stop: tuple[str, str, str], why: str, cancel_running: bool) -> None:
        if self.finished:
            return
        if self.why is None or (self.why == "failure" and why != "failure"):
            self.stop, self.why = stop, why
        for member in list(self.active.values()):
            if cancel_running or (isinstance(member, _Step) and member.state == "queued"):
                member.cancel(stop)
        for node in self.nodes:
            if node.name not in self.outcome and node.name not in self.active:
                self.skip(node, stop[2])
        self.ready_line.clear()

    def skip(self, node: Node, reason: str) -> None:
        self.outcome[node.name] = ("skipped", reason)
        self.handed_out.add(node.name)
        self.model.skip_all(node, reason)

    def block_over(self, name: str, status: str) -> None:
        self.post(name, (status, "" if status == "succeeded" else f"block '{name}' {status}"))

    def maybe_done(self) -> None:
        if self.finished or self.active or len(self.outcome) < len(self.nodes):
            return
        self.finished = True
        self.model.timers = [e for e in self.model.timers if e[2] is not self]
        good = all(
            s in ("succeeded", "failed (allowed)") or n in self.benign for n, (s, _) in self.outcome.items()
        )
        if self.why == "timeout" or (self.why == "parent" and self.stop and self.stop[0] == "timed_out"):
            status = "timed_out"
        elif self.why == "parent":
            status = "cancelled"
        else:
            status = "succeeded" if good else "failed"
        self.on_done(status)  # type: ignore[operator]


class Model:
    """Simulate ``flow`` and return the verdict."""

    def __init__(self, flow: Flow) -> None:
        self.flow = flow
        self.t = 0.0
        self.run_cap = [0, flow.max_concurrent]
        self.line: list[_Step] = []
        self.timers: list[tuple[float, int, object, str]] = []
        self.gone: deque[_Step] = deque()
        self.states: dict[str, tuple[str, str]] = {}
        self.started: set[str] = set()
        self.in_flight = 0
        self.peak = 0
        self._seq = 0
        self.result: str | None = None
        self.times: list[float] = [0.0]  # when each event happened (the real sample needs them apart)

    def at(self, when: float, target: object, kind: str) -> None:
        self._seq += 1
        self.timers.append((when, self._seq, target, kind))

    def skip_all(self, node: Node, reason: str) -> None:
        for leaf in leaves([node]):
            self.states.setdefault(leaf.name, ("skipped", reason))

    def dispatch(self) -> None:
        for step in list(self.line):
            if all(used < limit for used, limit in step.caps):
                self.line.remove(step)
                step.admit()

    def settle_everything(self) -> None:
        self.dispatch()
        while self.gone:
            self.gone.popleft().gone()
            self.dispatch()

    def run(self) -> Verdict:
        policy = ("fail_all" if self.flow.fail_fast else "continue") if self.flow.dag else "sequence"
        root = _Group(
            self, self.flow.nodes, policy, [], one_at_a_time=not self.flow.dag, on_done=self._root_done
        )
        root.start()
        self.settle_everything()
        while self.result is None:
            if not self.timers:
                raise AssertionError("model: nothing left to happen but the run is not over")
            event = min(self.timers, key=lambda e: (e[0], e[1]))
            self.timers.remove(event)
            self.t, _, target, kind = event
            self.times.append(self.t)
            if kind == "end":
                target.attempt_over()  # type: ignore[attr-defined]
            elif kind == "retry":
                target.begin_attempt()  # type: ignore[attr-defined]
            else:
                target.deadline()  # type: ignore[attr-defined]
            self.settle_everything()
        return Verdict(self.states, self.started, self.peak, 0 if self.result == "succeeded" else 1)

    def _root_done(self, status: str) -> None:
        self.result = status
