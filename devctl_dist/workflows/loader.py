"""Read a workflow file into a ``WorkflowSchema``, or fail with one clear line.

Every error names the file and line, and the step when it is inside one:
``deploy.yaml:14: step 'Deploy API': unknown key 'comand'``. Lines come from the
YAML node tree (yaml_parse.py), which is walked in parallel with pydantic's
error location; no traceback or multi-line pydantic message reaches the user.
A valid file never needs that tree, so it is composed only when there is an
error to place (``_root``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from pydantic_core import ErrorDetails

from devctl_dist.core.exceptions import WorkflowLoadError, WorkflowValidationError
from devctl_dist.core.gc_pause import gc_paused
from devctl_dist.workflows.input_checks import MAX_DOCUMENT_BYTES, suggestion
from devctl_dist.workflows.schema import WorkflowSchema
from devctl_dist.workflows.validation import normalize
from devctl_dist.workflows.yaml_parse import load_yaml, parse_yaml
from devctl_dist.workflows.yaml_parse import one_line as _one_line

Loc = tuple[int | str, ...]

_ROOT_STEP_LISTS = ("steps", "on_success", "on_failure")
_MAX_SHOWN = 60


def load_workflow(path: str | Path) -> WorkflowSchema:
    """Read and validate a workflow file; errors name ``path`` as the user gave it."""
    source = str(path)
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise WorkflowLoadError("file not found", source) from None
    except IsADirectoryError:
        raise WorkflowLoadError("is a directory, not a workflow file", source) from None
    except PermissionError:
        raise WorkflowLoadError("permission denied", source) from None
    except OSError as error:
        raise WorkflowLoadError(f"cannot read file: {error.strerror or error}", source) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise WorkflowLoadError(f"not UTF-8 text (byte {error.start})", source, line) from None
    return load_workflow_text(text, source)


def load_workflow_text(text: str, source: str) -> WorkflowSchema:
    """Parse and validate workflow YAML; ``source`` names it in error messages.

    Unnamed parallel blocks come back named ``parallel-1``, ``parallel-2``... so
    two of them are not duplicates.
    """
    if len(text) > MAX_DOCUMENT_BYTES:
        raise WorkflowLoadError(f"file is too large (over {MAX_DOCUMENT_BYTES // 1024 // 1024} MiB)", source)
    with gc_paused():  # a big file makes ~10 objects a value: full GC passes made loading quadratic
        found, data = load_yaml(text, source)
        return _validated(found, data, text, source)


def _validated(found: bool, data: Any, text: str, source: str) -> WorkflowSchema:
    if not found:
        raise WorkflowLoadError("file is empty (expected a mapping with 'steps')", source)
    if not isinstance(data, dict):
        line = _root(text, source).start_mark.line + 1
        message = f"top level must be a mapping with 'steps' (got {_describe(data)})"
        raise WorkflowValidationError(message, source, line)
    try:
        workflow = WorkflowSchema.model_validate(data)
    except ValidationError as error:
        raise _first_error(error, _root(text, source), data, source) from None
    except RecursionError:  # a recursive alias (``vars: &v {x: *v}``): the JSON checks never end
        message = "invalid YAML: a value contains itself (a recursive alias)"
        raise WorkflowLoadError(message, source) from None
    return normalize(workflow)


def _root(text: str, source: str) -> yaml.Node:
    """The node tree of a document ``load_yaml`` read: only an error needs its lines."""
    root, _ = parse_yaml(text, source)
    assert root is not None  # load_yaml found a document in the same text
    return root


def _first_error(error: ValidationError, root: yaml.Node, data: Any, source: str) -> WorkflowValidationError:
    """The error that comes first in the file, as one line with its step and key.

    A missing key has no line of its own, so errors that point at text win.
    """
    located = [
        (err["type"] == "missing", _line_of(root, tuple(err["loc"])), index, err)
        for index, err in enumerate(error.errors())
    ]
    _, line, _, first = min(located, key=lambda item: item[:3])
    step, rest = _enclosing_step(data, tuple(first["loc"]))
    message = _describe_error(first, rest)
    if first["type"] == "extra_forbidden":
        message += suggestion(tuple(first["loc"]))
    if step is not None:
        message = f"{step}: {message}"
    return WorkflowValidationError(message, source, line)


def _line_of(root: yaml.Node, loc: Loc) -> int:
    """1-based line of the deepest node ``loc`` reaches (a key's own line for mapping keys)."""
    node: yaml.Node = root
    mark = root.start_mark
    for item in loc:
        found = _child(node, item)
        if found is None:
            break
        anchor, node = found
        mark = anchor.start_mark
    return int(mark.line) + 1


def _child(node: yaml.Node, item: int | str) -> tuple[yaml.Node, yaml.Node] | None:
    """(node that marks the position, value node) for one step of a pydantic ``loc``."""
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in reversed(node.value):
            if isinstance(key_node, yaml.ScalarNode) and key_node.value == str(item):
                return key_node, value_node
    elif isinstance(node, yaml.SequenceNode) and isinstance(item, int) and 0 <= item < len(node.value):
        child: yaml.Node = node.value[item]
        return child, child
    return None


def _enclosing_step(data: Any, loc: Loc) -> tuple[str | None, Loc]:
    """The nearest step around ``loc`` (its label) and the part of ``loc`` inside it.

    Steps live in the top-level lists steps/on_success/on_failure and in each
    parallel block's ``steps``; a walk through the raw data tracks which is which.
    """
    label: str | None = None
    rest_start = 0
    state = "root"
    current = data
    for position, item in enumerate(loc):
        if not _has_item(current, item):
            break
        child = current[item]
        state = _next_state(state, item)
        if state == "step" and isinstance(item, int):
            label = _step_label(child, item, loc[position - 1])
            rest_start = position + 1
        current = child
    return label, loc[rest_start:]


def _has_item(container: Any, item: int | str) -> bool:
    if isinstance(container, dict):
        return item in container
    return isinstance(container, list) and isinstance(item, int) and 0 <= item < len(container)


def _next_state(state: str, item: int | str) -> str:
    """root -steps-> list -i-> step -parallel-> block -steps-> list ..."""
    if state == "root" and item in _ROOT_STEP_LISTS:
        return "list"
    if state == "list" and isinstance(item, int):
        return "step"
    if state == "step" and item == "parallel":
        return "block"
    if state == "block" and item == "steps":
        return "list"
    return "other"


def _step_label(step: Any, index: int, list_name: int | str) -> str:
    """``step 'name'``, else the block's name, else its position (``on_failure step #2``)."""
    if isinstance(step, dict):
        name = step.get("name")
        block = step.get("parallel")
        if name is None and isinstance(block, dict):
            name = block.get("name")
        if name is not None and not isinstance(name, dict | list):
            return f"step '{name}'"
    prefix = "" if list_name == "steps" else f"{list_name} "
    return f"{prefix}step #{index + 1}"


def _describe_error(err: ErrorDetails, rest: Loc) -> str:
    """Turn one pydantic error into a short sentence about ``rest`` (the path inside the step)."""
    kind, ctx, got = err["type"], err.get("ctx") or {}, err.get("input")
    if "[key]" in rest:
        mapping = _path(rest[: rest.index("[key]") - 1]) or "mapping"
        return f"{mapping} keys must be strings (got {_describe(got)})"
    field = _path(rest)
    parent = _path(rest[:-1])
    where = f" in '{parent}'" if parent else ""
    if kind == "extra_forbidden":
        return f"unknown key '{rest[-1]}'{where}"
    if kind == "missing":
        return f"missing required key '{rest[-1]}'{where}"
    if kind == "literal_error":
        options = ", ".join(re.findall(r"'([^']*)'", str(ctx.get("expected", ""))))
        return f"{field} must be one of {options} (got {_describe(got)})"
    bounds = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}
    if kind in bounds:
        bound = next(iter(ctx.values()), "?")
        bound = int(bound) if isinstance(bound, float) and bound.is_integer() else bound
        return f"{field} must be {bounds[kind]} {bound} (got {_describe(got)})"
    if kind == "too_short":
        minimum = ctx.get("min_length", 1)
        need = "must not be empty" if minimum == 1 else f"must have at least {minimum} items"
        return f"{field} {need}"
    if kind in ("value_error", "assertion_error"):
        text = re.sub(r"^(Value|Assertion) error, ", "", err["msg"])
        return f"{field}: {text}" if field else text
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        if not field:
            return f"expected a mapping with 'name' and 'command' (got {_describe(got)})"
        return f"{field} must be a mapping (got {_describe(got)})"
    text = re.sub(r"^Input should be ", "must be ", err["msg"])
    return f"{field or 'value'} {_one_line(text)} (got {_describe(got)})"


def _path(loc: Sequence[int | str]) -> str:
    """``('parallel', 'max_concurrent')`` -> ``parallel.max_concurrent``; ints as ``[0]``."""
    out = ""
    for item in loc:
        out += f"[{item}]" if isinstance(item, int) else (f".{item}" if out else str(item))
    return out


def _describe(value: Any) -> str:
    """A short, one-line rendering of a user's value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    shown = repr(value)
    return shown if len(shown) <= _MAX_SHOWN else shown[: _MAX_SHOWN - 4] + "...'"


def locate_step(path: str | Path, name: str, occurrence: int = 0) -> int | None:
    """Line of the ``occurrence``-th step called ``name`` (-1: the last), for errors found after loading.

    Walks the YAML node tree, so block style (``- name: x``) and flow style
    (``- {name: x, ...}``) are found alike.
    """
    try:
        root = yaml.compose(Path(path).read_text(encoding="utf-8"), Loader=yaml.SafeLoader)
    except (OSError, UnicodeDecodeError, yaml.YAMLError, RecursionError):
        return None
    found: list[int] = []
    stack = [root] if root is not None else []
    while stack:
        node = stack.pop()
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if getattr(key, "value", None) == "name" and getattr(value, "value", None) == name:
                    found.append(key.start_mark.line + 1)
            stack.extend(value for _, value in reversed(node.value))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(reversed(node.value))
    if not found:
        return None
    found.sort()
    return found[occurrence] if -len(found) <= occurrence < len(found) else found[-1]
