"""The dependency graph of a DAG workflow.

Pure on purpose (no I/O, no asyncio, no pydantic): the scheduler, ``--dry-run``
and ``devctl graph`` all plan from it, and it must stay fast on huge graphs.
Everything is linear in steps plus edges. Cycle detection and ordering come from
the standard library's ``graphlib.TopologicalSorter``, except when the steps are
declared dependencies-first: that order is already topological, so one pass
plans it (see ``bench/bench_graph.py`` for both paths).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from functools import cached_property
from graphlib import CycleError, TopologicalSorter
from typing import NamedTuple, Protocol

from devctl_dist.core.exceptions import DependencyCycleError, DuplicateStepError, MissingDependencyError
from devctl_dist.core.gc_pause import gc_paused


class GraphNode(Protocol):
    """Anything with a name and the names it depends on (a step schema, a test stub)."""

    @property
    def display_name(self) -> str: ...

    @property
    def depends_on(self) -> Sequence[str]: ...


class SimpleNode(NamedTuple):
    """A bare node, for graphs built from a plain mapping (tests, benches)."""

    display_name: str
    depends_on: Sequence[str] = ()


class DependencyGraph:
    """Steps, their dependencies and their dependents, in declaration order.

    Treat a graph as immutable once built: the plan is computed once and cached.
    """

    def __init__(self, steps: Iterable[GraphNode]) -> None:
        """Raise for a duplicate name or an unknown dependency at once; cycles wait for ``validate``."""
        self.steps: dict[str, GraphNode] = {}
        with gc_paused():
            for node in steps:
                name = node.display_name
                if name in self.steps:
                    raise DuplicateStepError(name)
                self.steps[name] = node
        self._check_missing()
        self._layers: list[list[str]] | None = None

    @classmethod
    def from_mapping(cls, deps: Mapping[str, Iterable[str]]) -> DependencyGraph:
        """Build a graph from ``{step: [dependencies]}``; key order is declaration order."""
        with gc_paused():
            nodes = [SimpleNode(name, tuple(names)) for name, names in deps.items()]
        return cls(nodes)

    @cached_property
    def dependencies(self) -> dict[str, set[str]]:
        """Direct dependencies of each step (names as written, even unknown ones)."""
        with gc_paused():
            return {name: set(node.depends_on) for name, node in self.steps.items()}

    @cached_property
    def dependents(self) -> dict[str, set[str]]:
        """Steps that directly depend on each step (what a finished step may unlock)."""
        with gc_paused():
            users: dict[str, set[str]] = {name: set() for name in self.steps}
            for name, node in self.steps.items():
                for dep in node.depends_on:
                    if dep in users:
                        users[dep].add(name)
            return users

    @cached_property
    def _position(self) -> dict[str, int]:
        return {name: index for index, name in enumerate(self.steps)}

    def order(self) -> list[str]:
        """Step names in declaration order."""
        return list(self.steps)

    def validate(self) -> None:
        """Raise ``MissingDependencyError`` or ``DependencyCycleError`` if this is not a DAG."""
        self._plan()

    def topological_sort(self) -> list[list[str]]:
        """Execution layers: each step sits one layer after its latest dependency."""
        return [list(layer) for layer in self._plan()]

    def prepared_sorter(self) -> TopologicalSorter[str]:
        """A fresh, validated, prepared sorter for a scheduler to drive with get_ready()/done()."""
        self._check_missing()
        with gc_paused():
            sorter: TopologicalSorter[str] = TopologicalSorter()
            for name, node in self.steps.items():
                sorter.add(name, *node.depends_on)
            try:
                sorter.prepare()
            except CycleError as error:
                raise DependencyCycleError(self._normalise_cycle(error.args[1])) from None
        return sorter

    def get_ready_steps(self, completed: set[str]) -> list[str]:
        """Steps not in ``completed`` whose dependencies all are, in declaration order."""
        return [
            name
            for name, deps in self.dependencies.items()
            if name not in completed and deps.issubset(completed)
        ]

    def get_root_steps(self) -> list[str]:
        """Steps that depend on nothing, in declaration order."""
        return [name for name, node in self.steps.items() if not node.depends_on]

    def has_dependencies(self, name: str | None = None) -> bool:
        """Whether step ``name`` has dependencies; without a name, whether any step has."""
        if name is None:
            return any(node.depends_on for node in self.steps.values())
        return bool(self.steps[name].depends_on)

    def frontier(self) -> Frontier:
        """A fresh frontier over this (validated) graph, for one run of it."""
        return Frontier({name: node.depends_on for name, node in self.steps.items()})

    def ancestors(self, name: str) -> set[str]:
        """Every step ``name`` depends on, directly or transitively."""
        steps = self.steps
        seen: set[str] = set()
        stack = list(steps[name].depends_on)
        while stack:
            current = stack.pop()
            if current in seen:
                continue
            seen.add(current)
            node = steps.get(current)
            if node is not None:
                stack.extend(node.depends_on)
        return seen

    def _plan(self) -> list[list[str]]:
        """Validate and layer once; cached because validate() and topological_sort() both need it."""
        if self._layers is None:
            with gc_paused():
                layers = self._layers_if_declared_in_order()
                if layers is None:  # __init__ already refused unknown dependencies
                    layers = self._layers_by_batches()
            # None: a cycle, which graphlib finds and names
            self._layers = layers if layers is not None else self._layers_from_sorter()
        return self._layers

    def _layers_if_declared_in_order(self) -> list[list[str]] | None:
        """One pass when every step comes after its dependencies (the usual way YAML is written).

        Such an order is itself a topological order, which proves there is no cycle,
        and a step's layer is one past its deepest dependency's. ``None`` on a
        forward (or self) reference: then graphlib decides.
        """
        depth: dict[str, int] = {}
        layers: list[list[str]] = []
        for name, node in self.steps.items():
            level = 0
            for dep in node.depends_on:
                dep_level = depth.get(dep)
                if dep_level is None:
                    return None
                if dep_level >= level:
                    level = dep_level + 1
            depth[name] = level
            if level == len(layers):
                layers.append([name])
            else:
                layers[level].append(name)
        return layers

    def _layers_by_batches(self) -> list[list[str]] | None:
        """graphlib's layers (whole batches of get_ready/done) without its bookkeeping: about 3x faster.

        Each layer holds the steps whose last dependency finished in the layer
        before, in declaration order. ``None`` when steps are left over: a cycle,
        which ``_layers_from_sorter`` then finds and names.
        """
        position = self._position.__getitem__
        waiting: dict[str, int] = {}
        dependents: dict[str, list[str]] = {name: [] for name in self.steps}
        for name, node in self.steps.items():
            deps: Collection[str] = node.depends_on
            if len(deps) > 1:
                deps = set(deps)  # a dependency named twice is one edge, as in graphlib
            waiting[name] = len(deps)
            for dep in deps:
                dependents[dep].append(name)
        layers: list[list[str]] = []
        layer = [name for name, count in waiting.items() if not count]
        placed = 0
        while layer:
            layers.append(layer)
            placed += len(layer)
            following = []
            for name in layer:
                for child in dependents[name]:
                    waiting[child] -= 1
                    if not waiting[child]:
                        following.append(child)
            following.sort(key=position)
            layer = following
        return layers if placed == len(self.steps) else None

    def _layers_from_sorter(self) -> list[list[str]]:
        """graphlib's prepare() finds any cycle; get_ready()/done() in whole batches gives the layers."""
        sorter = self.prepared_sorter()
        position = self._position.__getitem__
        layers: list[list[str]] = []
        with gc_paused():
            ready = sorted(sorter.get_ready(), key=position)
            while ready:
                layers.append(ready)
                sorter.done(*ready)
                ready = sorted(sorter.get_ready(), key=position)
        return layers

    def _check_missing(self) -> None:
        steps = self.steps
        for name, node in steps.items():
            for dep in node.depends_on:
                if dep not in steps:
                    raise MissingDependencyError(name, dep)

    def _normalise_cycle(self, found: Sequence[str]) -> list[str]:
        """graphlib lists predecessors first; we print "depends on" arrows from the earliest step."""
        ring = list(reversed(found))[:-1]
        start = min(range(len(ring)), key=lambda i: self._position[ring[i]])
        ring = ring[start:] + ring[:start]
        return [*ring, ring[0]]


def plan_waves(layers: list[list[str]], max_concurrent: int) -> list[list[str]]:
    """Split each layer into chunks of at most ``max_concurrent`` (what --dry-run shows)."""
    if max_concurrent < 1:
        raise ValueError(f"max_concurrent must be >= 1 (got {max_concurrent})")
    waves: list[list[str]] = []
    for layer in layers:
        for start in range(0, len(layer), max_concurrent):
            waves.append(layer[start : start + max_concurrent])
    return waves


class Ancestry(Collection[str]):
    """The results a DAG step may read: its ancestors (computed only when asked)."""

    def __init__(self, name: str, deps: Mapping[str, Sequence[str]], base: frozenset[str]) -> None:
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


Blocked = tuple[str, str]  # (a step that can no longer run, the dependency that stopped it)


class Frontier:
    """What may start next in one run of a graph: graphlib's prepare / get_ready / done, plus failure.

    ``done(name, ok=False)`` answers which dependents can no longer run, so the
    scheduler never re-derives reachability itself. Nodes are names in
    declaration order; the graph must already be validated (no cycle, no
    unknown dependency). Linear in nodes plus edges over a whole run.
    """

    def __init__(self, deps: Mapping[str, Iterable[str]]) -> None:
        with gc_paused():
            self._index = {name: i for i, name in enumerate(deps)}
            self._waiting = {name: len(set(names)) for name, names in deps.items()}
            self._dependents: dict[str, list[str]] = {name: [] for name in deps}
            for name, names in deps.items():
                for dep in set(names):
                    self._dependents[dep].append(name)
        self._ready: list[str] = []
        self._settled: set[str] = set()
        self._prepared = False

    def prepare(self) -> None:
        """Mark the roots ready; call once before ``get_ready``."""
        if self._prepared:
            raise ValueError("frontier already prepared")
        self._prepared = True
        self._ready = [name for name, count in self._waiting.items() if count == 0]

    def get_ready(self) -> list[str]:
        """Nodes whose dependencies all succeeded since the last call, in declaration order."""
        ready, self._ready = [n for n in self._ready if n not in self._settled], []
        if len(ready) > 1:
            ready.sort(key=self._index.__getitem__)
        return ready

    def done(self, name: str, ok: bool) -> list[Blocked]:
        """Settle ``name``; when not ``ok``, return every dependent that can no longer run.

        The list is in the order the blockage spreads (direct dependents first),
        each with the dependency that stopped it; those nodes are settled too.
        """
        if name in self._settled:
            raise ValueError(f"node {name!r} already settled")
        self._settled.add(name)
        if ok:
            for child in self._dependents[name]:
                self._waiting[child] -= 1
                if self._waiting[child] == 0 and child not in self._settled:
                    self._ready.append(child)
            return []
        blocked: list[Blocked] = []
        queue = [name]
        for parent in queue:
            for child in sorted(self._dependents[parent], key=self._index.__getitem__):
                if child not in self._settled:
                    self._settled.add(child)
                    blocked.append((child, parent))
                    queue.append(child)
        return blocked

    def skip(self, name: str) -> None:
        """Settle a node that will never run for a reason outside the graph (a stop, a timeout)."""
        self._settled.add(name)

    def is_active(self) -> bool:
        """True while some node is neither settled nor handed out."""
        return len(self._settled) < len(self._index)
