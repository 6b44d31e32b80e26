"""YAML text to (node tree, data): libyaml's speed, the pure-Python loader's errors.

The node tree gives every error its line. Two loaders build the same tree with
the same checks (no duplicate keys, bounded nesting): the fast one composes
libyaml's events (about 13x faster on a 10,000-step file); the pure-Python one
runs only when the fast one found anything wrong, or libyaml is missing, so a
bad file gets exactly the message it always got.
"""

from __future__ import annotations

import re
from typing import Any

import yaml
from yaml.composer import Composer
from yaml.constructor import SafeConstructor
from yaml.reader import Reader
from yaml.resolver import Resolver

from devctl_dist.core.exceptions import WorkflowLoadError
from devctl_dist.workflows.input_checks import MAX_DEPTH, MAX_NODES, check_nodes

CParser: Any
try:
    from yaml._yaml import CParser
except ImportError:  # PyYAML without libyaml: the pure-Python loader does it all
    CParser = None

_MERGE_TAG = "tag:yaml.org,2002:merge"
# Where libyaml accepts what PyYAML refuses (found by a differential fuzz of mutated
# workflow files): tabs, '?' (explicit keys; plain scalars in flow collections) and a
# comment glued to a block scalar indicator (``|#``).
_LIBYAML_DIFFERS = re.compile(r"\t|\?|[|>][-+0-9]*#")


class _DuplicateKey(Exception):
    def __init__(self, key: str, line: int, first_line: int) -> None:
        super().__init__(key)
        self.key, self.line, self.first_line = key, line, first_line


class _TooDeep(Exception):
    def __init__(self, line: int) -> None:
        super().__init__(line)
        self.line = line


class _NotFast(Exception):
    """The fast path saw something it leaves to the pure-Python loader to report."""


def _check_duplicates(node: yaml.MappingNode) -> None:
    seen: dict[tuple[str, str], int] = {}
    for key_node, _ in node.value:
        if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == _MERGE_TAG:
            continue
        key = (key_node.tag, key_node.value)
        line = key_node.start_mark.line + 1
        if key in seen:
            raise _DuplicateKey(key_node.value, line, seen[key])
        seen[key] = line


class _StrictSafeLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate mapping keys (plain YAML keeps the last silently)
    and nesting deeper than ``MAX_DEPTH`` (PyYAML's scanner is quadratic in the depth)."""

    def fetch_flow_collection_start(self, TokenClass: Any) -> None:
        if self.flow_level >= MAX_DEPTH:
            raise _TooDeep(self.line + 1)
        super().fetch_flow_collection_start(TokenClass)

    def add_indent(self, column: int) -> bool:
        if len(self.indents) >= MAX_DEPTH:
            raise _TooDeep(self.line + 1)
        return bool(super().add_indent(column))

    def compose_mapping_node(self, anchor: Any) -> yaml.MappingNode:
        node = super().compose_mapping_node(anchor)
        _check_duplicates(node)
        return node


class _FastStrictLoader(Composer, SafeConstructor, Resolver):
    """The same tree from libyaml's events: Python composes, so depth and keys are checked
    as nodes are made (libyaml's own composer recurses in C, unbounded)."""

    def __init__(self, text: str) -> None:
        self._parser = CParser(text)
        self.check_event = self._parser.check_event
        self.peek_event = self._parser.peek_event
        self.get_event = self._parser.get_event
        SafeConstructor.__init__(self)
        Resolver.__init__(self)
        Composer.__init__(self)
        self.depth = self.expanded = 0
        self.sizes: dict[str, int] = {}  # anchor -> values it expands to
        self.escapes = "\\" in text  # only escapes make NULs and lone surrogates

    def compose_node(self, parent: Any, index: Any) -> yaml.Node | None:
        """Counts values as aliases expand them (``check_nodes``' measure, in O(1) a node)."""
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            self.expanded += self.sizes.get(event.anchor or "", 1)
            return super().compose_node(parent, index)
        before = self.expanded
        self.expanded += 1
        self.depth += 1
        if self.depth >= MAX_DEPTH - 1:  # near the bound: let the pure loader judge and word it
            raise _NotFast
        node = super().compose_node(parent, index)
        self.depth -= 1
        if event.anchor is not None:
            self.sizes[event.anchor] = self.expanded - before
        if self.expanded > MAX_NODES:
            raise _NotFast
        if self.escapes and isinstance(node, yaml.ScalarNode) and not _deliverable(node.value):
            raise _NotFast
        return node

    def compose_mapping_node(self, anchor: Any) -> yaml.MappingNode:
        node: yaml.MappingNode = super().compose_mapping_node(anchor)
        _check_duplicates(node)
        return node

    def dispose(self) -> None:
        self._parser.dispose()




def _deliverable(value: str) -> bool:
    """What ``check_nodes`` asks of a scalar: no NUL, no lone surrogate."""
    return "\0" not in value and (value.isascii() or _encodes(value))


def _encodes(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def parse_yaml(text: str, source: str) -> tuple[yaml.Node | None, Any]:
    """Compose the node tree (for lines) and construct the data from the same tree."""
    if CParser is not None and not _LIBYAML_DIFFERS.search(text) and not Reader.NON_PRINTABLE.search(text):
        try:
            return _parse_fast(text)
        except Exception:  # any doubt: the pure loader decides, and words the error
            pass
    return _parse_pure(text, source)


def _parse_fast(text: str) -> tuple[yaml.Node | None, Any]:
    loader = _FastStrictLoader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            return None, None
        return root, loader.construct_document(root)
    finally:
        loader.dispose()


def _parse_pure(text: str, source: str) -> tuple[yaml.Node | None, Any]:
    loader: _StrictSafeLoader | None = None
    try:
        loader = _StrictSafeLoader(text)  # the reader checks every character here
        root = loader.get_single_node()
        if root is not None:
            check_nodes(root, source)
        data = loader.construct_document(root) if root is not None else None
    except _TooDeep as deep:
        raise WorkflowLoadError(
            f"invalid YAML: nested more than {MAX_DEPTH} levels deep", source, deep.line
        ) from None
    except _DuplicateKey as dup:
        message = f"duplicate key '{dup.key}' (first defined on line {dup.first_line})"
        raise WorkflowLoadError(message, source, dup.line) from None
    except yaml.MarkedYAMLError as error:
        raise _yaml_error(error, source) from None
    except yaml.reader.ReaderError as error:
        line = text[: error.position].count("\n") + 1
        what = f"character #x{error.character:04x}" if isinstance(error.character, int) else "character"
        message = f"invalid YAML: control {what} is not allowed, even in a comment"
        raise WorkflowLoadError(message, source, line) from None
    except yaml.YAMLError as error:
        raise WorkflowLoadError(f"invalid YAML: {one_line(str(error))}", source) from None
    except RecursionError:
        raise WorkflowLoadError("invalid YAML: nested too deeply", source) from None
    finally:
        if loader is not None:
            loader.dispose()
    return root, data


def _yaml_error(error: yaml.MarkedYAMLError, source: str) -> WorkflowLoadError:
    """One line from PyYAML's problem/context pair, at the problem's line."""
    mark = error.problem_mark or error.context_mark
    line = mark.line + 1 if mark is not None else None
    problem, context = one_line(error.problem or ""), one_line(error.context or "")
    if problem.startswith("but ") and context:
        message = f"invalid YAML: {context} {problem}"
    else:
        message = f"invalid YAML: {problem or context or 'syntax error'}"
        context_mark = error.context_mark
        if problem and context and context_mark is not None and context_mark.line + 1 != line:
            message += f" ({context} at line {context_mark.line + 1})"
    if "<block" in problem:
        message += "; check the indentation"
    unknown_tag = re.search(r"for the tag '(![^']*)'", error.problem or "")
    if unknown_tag:
        message += f'; quote shell commands: command: "{unknown_tag.group(1)} ..."'
    return WorkflowLoadError(message, source, line)


def one_line(text: str) -> str:
    return " ".join(text.split())
