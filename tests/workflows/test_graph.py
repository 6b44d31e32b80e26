"""DependencyGraph: validation, layers, readiness, cycles named in "depends on" order."""

from __future__ import annotations

import random

import pytest

from devctl_dist.core.exceptions import (
    DependencyCycleError,
    DuplicateStepError,
    GraphError,
    MissingDependencyError,
)
from devctl_dist.workflows.graph import DependencyGraph, SimpleNode, plan_waves
from devctl_dist.workflows.loader import load_workflow_text

SEED_DAG = {
    "checkout": [],
    "build-backend": ["checkout"],
    "build-frontend": ["checkout"],
    "deploy": ["build-backend", "build-frontend"],
}


def test_seed_dag_layers_roots_and_relations() -> None:
    graph = DependencyGraph.from_mapping(SEED_DAG)
    graph.validate()
    assert graph.order() == list(SEED_DAG)
    assert graph.topological_sort() == [["checkout"], ["build-backend", "build-frontend"], ["deploy"]]
    assert graph.get_root_steps() == ["checkout"]
    assert graph.dependencies["deploy"] == {"build-backend", "build-frontend"}
    assert graph.dependents["checkout"] == {"build-backend", "build-frontend"}
    assert graph.dependents["deploy"] == set()
    assert graph.has_dependencies("deploy")
    assert not graph.has_dependencies("checkout")
    assert graph.ancestors("deploy") == {"checkout", "build-backend", "build-frontend"}
    assert graph.ancestors("checkout") == set()


def test_layers_keep_declaration_order_when_dependencies_come_later() -> None:
    """Forward references take the graphlib path; layers are still in declaration order."""
    deps = {"deploy": ["web", "api"], "web": ["base"], "api": ["base"], "lint": [], "base": []}
    graph = DependencyGraph.from_mapping(deps)
    assert graph.topological_sort() == [["lint", "base"], ["web", "api"], ["deploy"]]
    assert graph.get_root_steps() == ["lint", "base"]


def test_both_planning_paths_agree_on_a_random_graph() -> None:
    rng = random.Random(3)
    deps = {f"s{i}": sorted({f"s{rng.randrange(i)}" for _ in range(3)}) if i else [] for i in range(2000)}
    in_order = DependencyGraph.from_mapping(deps).topological_sort()
    names = list(deps)
    rng.shuffle(names)
    shuffled = DependencyGraph.from_mapping({name: deps[name] for name in names}).topological_sort()
    assert [set(layer) for layer in in_order] == [set(layer) for layer in shuffled]
    position = {name: i for i, name in enumerate(names)}
    assert all(layer == sorted(layer, key=position.__getitem__) for layer in shuffled)


@pytest.mark.parametrize("seed", range(20))
def test_batch_layers_are_graphlibs_and_a_cycle_is_still_named(seed: int) -> None:
    """Out-of-order files are layered without graphlib; graphlib's batches are the reference."""
    rng = random.Random(seed)
    size = rng.randrange(2, 60)
    acyclic = seed % 2 == 0  # dependencies on earlier steps only, before the shuffle
    deps = {
        f"s{i}": [f"s{rng.randrange(i if acyclic else size)}" for _ in range(rng.randrange(3) if i else 0)]
        for i in range(size)
    }
    names = list(deps)
    rng.shuffle(names)
    shuffled = {name: deps[name] for name in names}
    reference = DependencyGraph.from_mapping(shuffled)
    try:
        expected: object = reference._layers_from_sorter()
    except DependencyCycleError as error:
        expected = str(error)
    try:
        got: object = DependencyGraph.from_mapping(shuffled).topological_sort()
    except DependencyCycleError as error:
        got = str(error)
    assert got == expected


def test_get_ready_steps_follows_completion() -> None:
    graph = DependencyGraph.from_mapping(SEED_DAG)
    assert graph.get_ready_steps(set()) == ["checkout"]
    assert graph.get_ready_steps({"checkout"}) == ["build-backend", "build-frontend"]
    assert graph.get_ready_steps({"checkout", "build-frontend"}) == ["build-backend"]
    assert graph.get_ready_steps(set(SEED_DAG) - {"deploy"}) == ["deploy"]
    assert graph.get_ready_steps(set(SEED_DAG)) == []


def test_prepared_sorter_drives_a_schedule() -> None:
    sorter = DependencyGraph.from_mapping(SEED_DAG).prepared_sorter()
    seen: list[str] = []
    while sorter.is_active():
        ready = sorted(sorter.get_ready())
        seen.extend(ready)
        sorter.done(*ready)
    assert seen == ["checkout", "build-backend", "build-frontend", "deploy"]


def test_topological_sort_returns_fresh_lists() -> None:
    graph = DependencyGraph.from_mapping(SEED_DAG)
    graph.topological_sort()[0].append("junk")
    assert graph.topological_sort()[0] == ["checkout"]


def test_missing_dependency_is_refused_at_construction() -> None:
    with pytest.raises(MissingDependencyError) as caught:
        DependencyGraph.from_mapping({"build": [], "deploy": ["build", "tset"]})
    assert (caught.value.step, caught.value.missing) == ("deploy", "tset")
    assert str(caught.value) == "step 'deploy' depends on unknown step 'tset'"
    assert "unknown step" in str(caught.value)


def test_has_dependencies_without_a_name_asks_about_the_whole_graph() -> None:
    assert DependencyGraph.from_mapping(SEED_DAG).has_dependencies()
    assert not DependencyGraph.from_mapping({"a": [], "b": []}).has_dependencies()
    assert DependencyGraph.from_mapping(SEED_DAG).has_dependencies("deploy")


@pytest.mark.parametrize(
    ("deps", "cycle"),
    [
        ({"a": ["b"], "b": ["c"], "c": ["a"]}, ["a", "b", "c", "a"]),
        ({"x": [], "c": ["a"], "a": ["b"], "b": ["c"]}, ["c", "a", "b", "c"]),
        ({"a": ["a"]}, ["a", "a"]),
        ({"root": [], "a": ["root", "b"], "b": ["a"], "tail": ["a"]}, ["a", "b", "a"]),
        ({"b": ["a"], "a": ["b"]}, ["b", "a", "b"]),
    ],
)
def test_cycle_is_named_in_depends_on_order_from_the_first_declared_step(
    deps: dict[str, list[str]], cycle: list[str]
) -> None:
    graph = DependencyGraph.from_mapping(deps)
    with pytest.raises(DependencyCycleError) as caught:
        graph.validate()
    assert caught.value.cycle == cycle
    assert str(caught.value) == "circular dependency: " + " -> ".join(cycle)
    assert isinstance(caught.value, GraphError)
    with pytest.raises(DependencyCycleError):
        graph.topological_sort()


def test_duplicate_step_name_is_rejected() -> None:
    with pytest.raises(DuplicateStepError) as caught:
        DependencyGraph([SimpleNode("a"), SimpleNode("b"), SimpleNode("a")])
    assert caught.value.name == "a"
    assert str(caught.value) == "duplicate step name 'a'"


def test_graph_from_loaded_workflow_steps() -> None:
    workflow = load_workflow_text(
        """
steps:
  - name: checkout
    command: "!git checkout main"
  - name: build
    command: "!make"
    depends_on: checkout
  - parallel:
      name: tests
      steps:
        - name: unit
          command: "!make test"
    depends_on: [build]
""",
        "dag.yaml",
    )
    graph = DependencyGraph(workflow.steps)
    assert graph.topological_sort() == [["checkout"], ["build"], ["tests"]]
    assert graph.steps["tests"] is workflow.steps[2]


def test_hundred_thousand_steps_validate_and_plan() -> None:
    """~300k edges, declared dependencies-first and shuffled: both plan correctly."""
    rng = random.Random(11)
    size = 100_000
    deps: dict[str, list[str]] = {}
    for i in range(size):
        picks = {rng.randrange(max(0, i - 1000), i) for _ in range(3)} if i else set()
        deps[f"s{i}"] = [f"s{j}" for j in picks]
    assert sum(map(len, deps.values())) > 290_000
    names = list(deps)
    rng.shuffle(names)
    for order in (list(deps), names):
        graph = DependencyGraph.from_mapping({name: deps[name] for name in order})
        graph.validate()
        layers = graph.topological_sort()
        level = {name: index for index, layer in enumerate(layers) for name in layer}
        assert len(level) == size
        for name, needs in deps.items():
            assert level[name] == (1 + max(level[d] for d in needs) if needs else 0)
        waves = plan_waves(layers, 10)
        assert sum(map(len, waves)) == size
        assert max(map(len, waves)) <= 10


def test_plan_waves_splits_each_layer() -> None:
    layers = [["a", "b", "c", "d", "e"], ["f"], ["g", "h"]]
    assert plan_waves(layers, 2) == [["a", "b"], ["c", "d"], ["e"], ["f"], ["g", "h"]]
    assert plan_waves(layers, 10) == layers
    assert plan_waves([], 3) == []
    with pytest.raises(ValueError, match="max_concurrent must be >= 1"):
        plan_waves(layers, 0)
