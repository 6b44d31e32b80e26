"""Checks on workflow input that the schema cannot express: size bounds and helpful hints.

A workflow is hand-written text, so generous bounds cost nobody anything and
keep hostile input (alias bombs, NUL bytes, lone surrogates) from reaching a
process or eating memory. Every problem is a one-line ``WorkflowLoadError``.
"""

from __future__ import annotations

import difflib
import types
import typing
from typing import Any

import yaml
from pydantic import BaseModel

from devctl_dist.core.exceptions import WorkflowLoadError
from devctl_dist.workflows.schema import WorkflowSchema

Loc = tuple[int | str, ...]

MAX_DOCUMENT_BYTES = 4 * 1024 * 1024
MAX_DEPTH = 100  # nesting levels; workflows use about ten
MAX_NODES = 1_000_000  # after alias expansion: a 400-byte alias bomb expands to billions


def check_nodes(root: yaml.Node, source: str) -> None:
    """Refuse documents that expand to too many nodes (aliases count each time they are used),
    and strings no process can receive: a NUL byte or a lone surrogate (from YAML escapes).

    Sizes are memoized per node, so a bomb is measured without being expanded. An
    alias back to an enclosing node (a recursive document) counts once, as the
    composer made it: walking into it again never ended (``a: &x [{*x}]``).
    """
    sizes: dict[int, int] = {}
    enclosing: set[int] = set()  # the nodes whose children are being measured
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if id(node) in sizes or (not children_done and id(node) in enclosing):
            continue
        children = _children(node)
        if not children_done:
            if isinstance(node, yaml.ScalarNode):
                _check_scalar(node, source)
            enclosing.add(id(node))
            stack.append((node, True))
            stack.extend(
                (child, False) for child in children if id(child) not in sizes and id(child) not in enclosing
            )
            continue
        enclosing.discard(id(node))
        total = 1 + sum(sizes.get(id(child), 1) for child in children)
        if total > MAX_NODES:
            line = node.start_mark.line + 1
            message = f"document too large: over {MAX_NODES:,} values after expanding aliases"
            raise WorkflowLoadError(message, source, line)
        sizes[id(node)] = total


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [item for pair in node.value for item in pair]
    return []


def _check_scalar(node: yaml.ScalarNode, source: str) -> None:
    value = node.value
    if "\0" in value:
        message = "a NUL character (\\0) is not allowed in a value"
        raise WorkflowLoadError(message, source, node.start_mark.line + 1)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        message = "a lone surrogate (\\ud800-\\udfff) is not valid text"
        raise WorkflowLoadError(message, source, node.start_mark.line + 1) from None


def suggestion(loc: Loc) -> str:
    """`` (did you mean 'timeout'?)`` for an unknown key close to a valid one, else ``''``."""
    model = _model_at(loc[:-1])
    if model is None or not isinstance(loc[-1], str):
        return ""
    close = difflib.get_close_matches(loc[-1], list(model.model_fields), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _model_at(loc: Loc) -> type[BaseModel] | None:
    """The schema model a pydantic ``loc`` points into (list indexes skipped)."""
    model: type[BaseModel] = WorkflowSchema
    for item in loc:
        if isinstance(item, int):
            continue
        field = model.model_fields.get(item)
        nested = _nested_model(field.annotation) if field is not None else None
        if nested is None:
            return None
        model = nested
    return model


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (list, typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            found = _nested_model(arg)
            if found is not None:
                return found
    return None
