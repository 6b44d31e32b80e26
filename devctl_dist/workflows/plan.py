"""Dry-run planning: which steps would start together, without running anything."""

from __future__ import annotations

from dataclasses import dataclass

from devctl_dist.workflows.graph import DependencyGraph, plan_waves
from devctl_dist.workflows.schema import WorkflowSchema
from devctl_dist.workflows.validation import check


@dataclass
class PlanStage:
    """One stage of the plan: a sequential step, a parallel block or the DAG, as waves."""

    title: str
    mode: str
    waves: list[list[str]]


def plan_workflow(workflow: WorkflowSchema, max_concurrent: int | None = None) -> list[PlanStage]:
    """Waves per stage under the concurrency cap (the cap splits wide layers)."""
    checked = check(workflow)
    workflow = checked.workflow
    cap = max_concurrent or workflow.parallel.max_concurrent
    if workflow.is_dag:
        layers = checked.graph.topological_sort()
        return [PlanStage("dependency graph", "dag", plan_waves(layers, cap))]
    stages = []
    for step in workflow.steps:
        if step.parallel is None:
            stages.append(PlanStage(step.display_name, "step", [[step.display_name]]))
            continue
        block_cap = min(cap, step.parallel.max_concurrent or cap)
        layers = DependencyGraph(step.parallel.steps).topological_sort()
        stages.append(PlanStage(step.display_name, "parallel", plan_waves(layers, block_cap)))
    return stages
