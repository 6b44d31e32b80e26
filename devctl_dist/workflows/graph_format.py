"""A workflow's shape for people: ``devctl graph`` (text, Mermaid, DOT) and the dry-run plan.

All three formats draw the same model: every step is a node, every parallel
block a cluster (subgraph) holding its steps, and edges are the order the
engine follows: consecutive items of a plain sequence, ``depends_on`` in a DAG
or inside a block. An edge to or from a block attaches to the whole cluster,
so a block of 1,000 steps between two steps costs two edges, not 2,000.
Nodes get generated ids (``n0``, ``n1``...) and names only ever appear as
escaped, quoted labels, so a step called ``end`` or ``a"b`` cannot break the
output.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from itertools import pairwise

from devctl_dist.core.exceptions import UsageError
from devctl_dist.workflows.graph import DependencyGraph
from devctl_dist.workflows.plan import plan_workflow
from devctl_dist.workflows.schema import WorkflowSchema, WorkflowStepSchema
from devctl_dist.workflows.validation import check, iter_steps

GRAPH_FORMATS = ("text", "mermaid", "dot")


@dataclass
class _Node:
    """A step (``children is None``) or a parallel block (a cluster of child nodes)."""

    id: str
    label: str
    children: list[_Node] | None = None

    def first_leaf(self) -> _Node:
        node = self
        while node.children:
            node = node.children[0]
        return node


@dataclass
class _Model:
    nodes: list[_Node] = field(default_factory=list)
    edges: list[tuple[_Node, _Node]] = field(default_factory=list)
    count: int = 0

    def scope(self, steps: Sequence[WorkflowStepSchema], *, ordered: bool) -> list[_Node]:
        """Nodes for one list of steps; ``ordered`` adds the implicit sequence edges."""
        nodes = [self.node(step) for step in steps]
        if any(step.depends_on for step in steps):
            by_name = {step.display_name: node for step, node in zip(steps, nodes, strict=True)}
            for step, node in zip(steps, nodes, strict=True):
                self.edges.extend((by_name[dep], node) for dep in step.depends_on)
        elif ordered:
            self.edges.extend(pairwise(nodes))
        return nodes

    def node(self, step: WorkflowStepSchema) -> _Node:
        node_id = f"n{self.count}"
        self.count += 1
        if step.parallel is None:
            return _Node(node_id, step.display_name)
        return _Node(node_id, block_label(step), self.scope(step.parallel.steps, ordered=False))


def block_label(step: WorkflowStepSchema) -> str:
    """``parallel: Deploy (on_failure: continue, max 3, timeout 600s)``."""
    assert step.parallel is not None
    block = step.parallel
    details = [f"on_failure: {block.on_failure}"]
    if block.max_concurrent is not None:
        details.append(f"max {block.max_concurrent}")
    if block.timeout is not None:
        details.append(f"timeout {block.timeout:g}s")
    return f"parallel: {step.display_name} ({', '.join(details)})"


def workflow_mode(workflow: WorkflowSchema) -> str:
    """``dag``, ``sequential`` or ``parallel``: the engine's three paths."""
    if workflow.is_dag:
        return "dag"
    return "sequential" if workflow.is_sequential else "parallel"


def count_steps(workflow: WorkflowSchema) -> int:
    """Command steps of the main flow (blocks unfolded, hooks not counted)."""
    return sum(1 for step in iter_steps(workflow) if not step.is_block)


def format_graph(workflow: WorkflowSchema, fmt: str) -> str:
    """Render ``workflow`` as ``text``, ``mermaid`` or ``dot``; raises on an invalid graph."""
    renderers: dict[str, Callable[[WorkflowSchema], str]] = {
        "text": _text,
        "mermaid": _mermaid,
        "dot": _dot,
    }
    if fmt not in renderers:
        raise UsageError(f"graph format {fmt!r}: choose one of {', '.join(GRAPH_FORMATS)}")
    return renderers[fmt](check(workflow).workflow)


def _model(workflow: WorkflowSchema) -> _Model:
    model = _Model()
    model.nodes = model.scope(workflow.steps, ordered=not workflow.is_dag)
    return model


# ---------------------------------------------------------------- dry-run plan


def format_plan(workflow: WorkflowSchema, max_concurrent: int | None = None, *, as_json: bool = False) -> str:
    """The dry-run report: stages and their waves, as text or (``--output json``) JSON."""
    stages = plan_workflow(workflow, max_concurrent)
    cap = max_concurrent or workflow.parallel.max_concurrent
    mode = workflow_mode(workflow)
    hooks = {
        "on_success": [step.display_name for step in workflow.on_success],
        "on_failure": [step.display_name for step in workflow.on_failure],
    }
    if as_json:
        document = {
            "workflow": workflow.name,
            "mode": mode,
            "max_concurrent": cap,
            "dry_run": True,
            "stages": [asdict(stage) for stage in stages],
            **hooks,
        }
        return json.dumps(document, indent=2) + "\n"
    lines = [
        f"Dry run of {workflow.name} ({mode}, {count_steps(workflow)} steps, max_concurrent {cap}): "
        "nothing is executed"
    ]
    for number, stage in enumerate(stages, start=1):
        if stage.mode == "step":
            lines.append(f"stage {number}: step {stage.title}")
            continue
        kind = "dependency graph" if stage.mode == "dag" else f"parallel block {stage.title!r}"
        lines.append(f"stage {number}: {kind}, {len(stage.waves)} waves")
        lines.extend(f"  wave {index}: {', '.join(wave)}" for index, wave in enumerate(stage.waves, start=1))
    for key, names in hooks.items():
        if names:
            lines.append(f"then {key}: {', '.join(names)}")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- mermaid


def mermaid_label(text: str) -> str:
    """A quoted Mermaid label; quotes, markup and entity starts become entity codes."""
    codes = {"#": "#35;", '"': "#34;", "<": "#60;", ">": "#62;", "`": "#96;"}
    cleaned = "".join(codes.get(ch, ch) for ch in " ".join(text.split()))
    return f'"{cleaned}"'


def _mermaid(workflow: WorkflowSchema) -> str:
    model = _model(workflow)
    lines = ["graph TD"]

    def emit(nodes: list[_Node], depth: int) -> None:
        pad = "    " * depth
        for node in nodes:
            if node.children is None:
                lines.append(f"{pad}{node.id}[{mermaid_label(node.label)}]")
                continue
            lines.append(f"{pad}subgraph {node.id}[{mermaid_label(node.label)}]")
            emit(node.children, depth + 1)
            lines.append(f"{pad}end")

    emit(model.nodes, 1)
    lines.extend(f"    {src.id} --> {dst.id}" for src, dst in model.edges)
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- dot


def dot_string(text: str) -> str:
    """A double-quoted DOT string: backslashes and quotes escaped, newlines as ``\\n``."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\r", "").replace("\n", "\\n")
    return f'"{escaped}"'


def _dot(workflow: WorkflowSchema) -> str:
    model = _model(workflow)
    lines = [
        f"digraph {dot_string(workflow.name)} {{",
        f"    label={dot_string(f'{workflow.name} ({workflow_mode(workflow)})')};",
        "    labelloc=t;",
        "    rankdir=TB;",
        "    compound=true;",
        "    node [shape=box, style=rounded];",
    ]

    def emit(nodes: list[_Node], depth: int) -> None:
        pad = "    " * depth
        for node in nodes:
            if node.children is None:
                lines.append(f"{pad}{node.id} [label={dot_string(node.label)}];")
                continue
            lines.append(f"{pad}subgraph cluster_{node.id} {{")
            lines.append(f"{pad}    label={dot_string(node.label)};")
            lines.append(f"{pad}    style=dashed;")
            emit(node.children, depth + 1)
            lines.append(f"{pad}}}")

    emit(model.nodes, 1)
    for src, dst in model.edges:
        attrs = []
        if src.children is not None:
            attrs.append(f"ltail=cluster_{src.id}")
        if dst.children is not None:
            attrs.append(f"lhead=cluster_{dst.id}")
        suffix = f" [{', '.join(attrs)}]" if attrs else ""
        lines.append(f"    {src.first_leaf().id} -> {dst.first_leaf().id}{suffix};")
    lines.append("}")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- text


def _text(workflow: WorkflowSchema) -> str:
    header = f"workflow: {workflow.name} ({workflow_mode(workflow)}, {count_steps(workflow)} steps)"
    lines = [header]
    if workflow.is_dag:
        lines += _text_layers(workflow.steps, "  ")
    else:
        lines += _text_sequence(workflow.steps)
    for title, hooks in (("on success", workflow.on_success), ("on failure", workflow.on_failure)):
        if hooks:
            lines.append(f"{title}:")
            lines += _text_sequence(hooks)
    return "\n".join(lines) + "\n"


def _text_sequence(steps: Sequence[WorkflowStepSchema]) -> list[str]:
    """Numbered items joined by down arrows: the order a sequence runs in."""
    lines: list[str] = []
    width = len(str(len(steps)))
    for index, step in enumerate(steps, start=1):
        if index > 1:
            lines += [f"  {'':>{width}}  |", f"  {'':>{width}}  v"]
        prefix = f"  {index:>{width}}. "
        lines.append(prefix + (block_label(step) if step.is_block else step.display_name))
        lines += _text_children(step, " " * (len(prefix) + 2))
    return lines


def _text_children(step: WorkflowStepSchema, pad: str) -> list[str]:
    if step.parallel is None:
        return []
    inner = step.parallel.steps
    if any(child.depends_on for child in inner):
        return _text_layers(inner, pad)
    lines: list[str] = []
    for child in inner:
        lines.append(f"{pad}- " + (block_label(child) if child.is_block else child.display_name))
        lines += _text_children(child, pad + "    ")
    return lines


def _text_layers(steps: Sequence[WorkflowStepSchema], pad: str) -> list[str]:
    """DAG layers: each step one layer below its latest dependency, with ``<-`` to its dependencies."""
    by_name = {step.display_name: step for step in steps}
    lines: list[str] = []
    for number, layer in enumerate(DependencyGraph(steps).topological_sort(), start=1):
        lines.append(f"{pad}layer {number}:")
        labels = {name: block_label(by_name[name]) if by_name[name].is_block else name for name in layer}
        width = max(map(len, labels.values()))
        for name, label in labels.items():
            step = by_name[name]
            deps = f"  <- {', '.join(step.depends_on)}" if step.depends_on else ""
            lines.append(f"{pad}  {label:<{width}}{deps}".rstrip())
            lines += _text_children(step, pad + "      ")
    return lines
