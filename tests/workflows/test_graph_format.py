"""`devctl graph` renderings and the dry-run plan text, from real schema objects."""

from __future__ import annotations

import json
import re
import time
from typing import Any

import pytest

from devctl_dist.core.exceptions import DependencyCycleError, UsageError
from devctl_dist.workflows.graph_format import count_steps, format_graph, format_plan, workflow_mode
from devctl_dist.workflows.schema import WorkflowSchema

MERMAID_NODE = re.compile(r'^\s+(n\d+)\["[^"]*"\]$')
MERMAID_SUBGRAPH = re.compile(r'^\s+subgraph (n\d+)\["[^"]*"\]$')
MERMAID_EDGE = re.compile(r"^\s+(n\d+) --> (n\d+)$")


def workflow(data: dict[str, Any]) -> WorkflowSchema:
    return WorkflowSchema.model_validate(data)


def cmd(name: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "command": "!true", **extra}


def mermaid_structure(text: str) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """Every line must be a node, subgraph, end or edge; returns id -> label and the edges."""
    lines = text.splitlines()
    assert lines[0] == "graph TD"
    labels: dict[str, str] = {}
    edges: list[tuple[str, str]] = []
    for line in lines[1:]:
        if edge := MERMAID_EDGE.match(line):
            edges.append((edge[1], edge[2]))
        elif node := MERMAID_NODE.match(line) or MERMAID_SUBGRAPH.match(line):
            labels[node[1]] = line.split('["', 1)[1][:-2]
        else:
            assert line.strip() == "end", line
    return labels, edges


def by_label(labels: dict[str, str], edges: list[tuple[str, str]]) -> set[tuple[str, str]]:
    return {(labels[a], labels[b]) for a, b in edges}


SEQUENTIAL = workflow({"name": "seq", "steps": [cmd("a"), cmd("b"), cmd("c")]})
BLOCKS = workflow(
    {
        "name": "deploy",
        "steps": [
            cmd("validate"),
            {
                "parallel": {
                    "name": "Deploy all",
                    "on_failure": "continue",
                    "max_concurrent": 2,
                    "steps": [cmd("api"), cmd("web"), cmd("migrate"), cmd("smoke", depends_on=["migrate"])],
                }
            },
            cmd("verify"),
        ],
        "on_failure": [cmd("rollback")],
    }
)
DAG = workflow(
    {
        "name": "build",
        "steps": [
            cmd("checkout"),
            cmd("backend", depends_on=["checkout"]),
            cmd("frontend", depends_on=["checkout"]),
            {
                "name": "publish",
                "depends_on": ["backend", "frontend"],
                "parallel": {"steps": [cmd("push-image"), cmd("push-docs")]},
            },
        ],
    }
)


def test_sequential_workflows_get_implicit_order_edges() -> None:
    labels, edges = mermaid_structure(format_graph(SEQUENTIAL, "mermaid"))
    assert by_label(labels, edges) == {("a", "b"), ("b", "c")}
    assert workflow_mode(SEQUENTIAL) == "sequential"


def test_blocks_are_clusters_joined_to_their_neighbours() -> None:
    labels, edges = mermaid_structure(format_graph(BLOCKS, "mermaid"))
    block = "parallel: Deploy all (on_failure: continue, max 2)"
    assert by_label(labels, edges) == {("validate", block), (block, "verify"), ("migrate", "smoke")}
    dot = format_graph(BLOCKS, "dot")
    assert "subgraph cluster_n1 {" in dot
    assert re.search(r"n0 -> n2 \[lhead=cluster_n1\];", dot)
    assert re.search(r"n2 -> n6 \[ltail=cluster_n1\];", dot)
    assert count_steps(BLOCKS) == 6
    assert workflow_mode(BLOCKS) == "parallel"


def test_dag_edges_follow_depends_on_including_a_block_node() -> None:
    labels, edges = mermaid_structure(format_graph(DAG, "mermaid"))
    block = "parallel: publish (on_failure: fail_all)"
    assert by_label(labels, edges) == {
        ("checkout", "backend"),
        ("checkout", "frontend"),
        ("backend", block),
        ("frontend", block),
    }


def test_text_shows_layers_arrows_blocks_and_hooks() -> None:
    dag = format_graph(DAG, "text")
    assert dag.splitlines()[0] == "workflow: build (dag, 5 steps)"
    assert re.search(r"layer 2:\n\s+backend\s+<- checkout\n\s+frontend\s+<- checkout", dag)
    assert re.search(
        r"layer 3:\n\s+parallel: publish .*<- backend, frontend\n\s+- push-image\n\s+- push-docs", dag
    )
    seq = format_graph(BLOCKS, "text")
    assert re.search(r"1\. validate\n\s+\|\n\s+v\n\s+2\. parallel: Deploy all", seq)
    assert re.search(r"layer 2:\n\s+smoke\s+<- migrate", seq)
    assert seq.rstrip().endswith("on failure:\n  1. rollback")


NASTY = ['say "hi"', "end", "a#b; c", "<b>bold</b>", "back\\slash", "tick`s", "graph TD"]


def test_names_are_escaped_so_no_name_breaks_the_output() -> None:
    nasty = workflow({"name": 'my "flow"', "steps": [cmd(name) for name in NASTY]})
    labels, edges = mermaid_structure(format_graph(nasty, "mermaid"))
    assert len(labels) == len(NASTY) and len(edges) == len(NASTY) - 1
    assert labels["n0"] == "say #34;hi#34;"
    assert labels["n2"] == "a#35;b; c"
    assert labels["n3"] == "#60;b#62;bold#60;/b#62;"
    dot = format_graph(nasty, "dot")
    assert dot.startswith('digraph "my \\"flow\\"" {')
    assert 'n0 [label="say \\"hi\\""];' in dot
    assert 'n4 [label="back\\\\slash"];' in dot
    for line in dot.splitlines()[1:-1]:  # every label is one balanced, quoted string
        assert len(re.sub(r"\\.", "", line).split('"')) in (1, 3), line


def test_a_big_block_costs_two_edges_not_thousands() -> None:
    big = workflow(
        {"steps": [cmd("before"), {"parallel": {"steps": [cmd(f"s{i}") for i in range(2000)]}}, cmd("after")]}
    )
    _, edges = mermaid_structure(format_graph(big, "mermaid"))
    assert len(edges) == 2


def test_large_dags_render_in_linear_time() -> None:
    steps = [cmd("s0")] + [cmd(f"s{i}", depends_on=[f"s{i // 2}"]) for i in range(1, 20000)]
    big = workflow({"steps": steps})
    started = time.perf_counter()
    for fmt in ("text", "mermaid", "dot"):
        assert format_graph(big, fmt)
    assert time.perf_counter() - started < 20


def test_errors() -> None:
    with pytest.raises(UsageError, match="choose one of text, mermaid, dot"):
        format_graph(SEQUENTIAL, "svg")
    cyclic = workflow({"steps": [cmd("a", depends_on=["b"]), cmd("b", depends_on=["a"])]})
    with pytest.raises(DependencyCycleError):
        format_graph(cyclic, "text")


def test_plan_text_and_json() -> None:
    text = format_plan(BLOCKS, max_concurrent=1)
    assert (
        text.splitlines()[0] == "Dry run of deploy (parallel, 6 steps, max_concurrent 1): nothing is executed"
    )
    assert "stage 2: parallel block 'Deploy all', 4 waves" in text
    assert "then on_failure: rollback" in text
    document = json.loads(format_plan(DAG, as_json=True))
    assert document["stages"][0]["waves"] == [["checkout"], ["backend", "frontend"], ["publish"]]
    assert document["max_concurrent"] == 10
