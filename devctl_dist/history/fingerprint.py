"""Hashes of a workflow's steps, so ``--resume`` can tell which steps changed since a run.

Each step (and block, and hook) is hashed from its own definition; a block's
hash leaves out its steps, which have their own. The run's hash is the hash of
all of them, in order.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping

from devctl_dist.workflows.schema import WorkflowSchema
from devctl_dist.workflows.validation import check, iter_steps


def step_hashes(workflow: WorkflowSchema) -> dict[str, str]:
    """``{step name: short hash of its definition}`` for every step, block and hook."""
    normalized = check(workflow).workflow
    hashes: dict[str, str] = {}
    for step in iter_steps(normalized, hooks=True):
        exclude = {"parallel": {"steps"}} if step.parallel is not None else None
        data = step.model_dump(mode="json", exclude=exclude)
        hashes[step.display_name] = _digest(data)
    return hashes


def workflow_hash(hashes: Mapping[str, str]) -> str:
    return _digest(list(hashes.items()))


def changed_steps(old: Mapping[str, str], new: Mapping[str, str]) -> list[str]:
    """Steps added, removed or changed between two ``step_hashes`` (new order first, then removed ones)."""
    changed = [name for name, digest in new.items() if old.get(name) != digest]
    return changed + [name for name in old if name not in new]


def _digest(data: object) -> str:
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
