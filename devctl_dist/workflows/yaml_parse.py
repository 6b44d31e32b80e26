"""YAML text to (node tree, data): libyaml's speed, the pure-Python loader's errors.

The node tree gives every error its line. Two loaders build the same tree with
the same checks (no duplicate keys, bounded nesting): the fast one composes
libyaml's events (about 13x faster on a 10,000-step file); the pure-Python one
runs only when the fast one found anything wrong, or libyaml is missing, so a
bad file gets exactly the message it always got.

Faster still, ``load_yaml`` builds the data straight from libyaml's events, with no
node tree at all: lines are only needed to report an error, so the loader composes
the tree (``parse_yaml``) only then. Whatever that builder is unsure of (explicit
tags, merge keys, non-string or repeated keys, undefined or recursive aliases,
the size and depth bounds) sends the file down the node path, which decides.
"""

from __future__ import annotations

import re
from typing import Any

import yaml
from yaml.composer import Composer
from yaml.constructor import SafeConstructor
from yaml.events import (
    AliasEvent,
    DocumentEndEvent,
    MappingEndEvent,
    MappingStartEvent,
    ScalarEvent,
    SequenceEndEvent,
    SequenceStartEvent,
    StreamEndEvent,
)
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


def load_yaml(text: str, source: str) -> tuple[bool, Any]:
    """(whether the file has a document, its data): ``parse_yaml``'s data, without the tree."""
    if CParser is not None and not _LIBYAML_DIFFERS.search(text) and not Reader.NON_PRINTABLE.search(text):
        try:
            return _EventBuilder(text).document()
        except Exception:  # any doubt: the node path decides, and words the error
            pass
    root, data = parse_yaml(text, source)
    return root is not None, data


_STR_TAG = "tag:yaml.org,2002:str"
_SCALAR_TAGS = {  # the scalars SafeConstructor makes from implicit tags, string aside
    f"tag:yaml.org,2002:{kind}": SafeConstructor.yaml_constructors[f"tag:yaml.org,2002:{kind}"]
    for kind in ("null", "bool", "int", "float", "timestamp")
}
_PLAIN_CACHE = 4096  # untagged scalars remembered: keys and repeated values, not every name
_OPEN = object()  # an anchor whose collection is still being built: a recursive alias


class _EventBuilder:
    """Python data from libyaml's events, as SafeConstructor would make it from the tree.

    Each collection is a frame ``[container, pending key, anchor, count at start]``;
    values are counted as ``check_nodes`` counts them (an alias counts its anchor's size).
    """

    def __init__(self, text: str) -> None:
        self._parser = CParser(text)
        self._escapes = "\\" in text  # only escapes make NULs and lone surrogates
        self._resolve: Any = Resolver().resolve  # the composer's own tag resolution
        self._constructor = SafeConstructor()
        self._tags: dict[tuple[str, Any], str] = {}  # (plain value, implicit) -> resolved tag
        self._plain: dict[tuple[str, Any], Any] = {}  # (value, implicit) -> value, for untagged scalars
        self._anchors: dict[str, tuple[Any, int]] = {}  # anchor -> (value, values it expands to)
        self._count = 0

    def document(self) -> tuple[bool, Any]:
        try:
            get_event = self._parser.get_event
            get_event()  # stream start
            if isinstance(get_event(), StreamEndEvent):
                return False, None
            data = self._node()
            if not isinstance(get_event(), DocumentEndEvent) or not isinstance(get_event(), StreamEndEvent):
                raise _NotFast  # a second document: the composer words that error
            if self._count > MAX_NODES:
                raise _NotFast
            return True, data
        finally:
            self._parser.dispose()

    def _node(self) -> Any:
        """The next node, collections built iteratively (no recursion, depth bounded)."""
        get_event = self._parser.get_event
        plain = self._plain
        stack: list[list[Any]] = []
        while True:
            event = get_event()
            kind = type(event)
            if kind is ScalarEvent:
                value = plain.get((event.value, event.implicit), _OPEN) if event.tag is None else _OPEN
                if value is _OPEN or event.anchor is not None:
                    value = self._scalar(event)
                else:
                    self._count += 1
            elif kind is MappingStartEvent or kind is SequenceStartEvent:
                self._open(event, stack)
                continue
            elif kind is MappingEndEvent or kind is SequenceEndEvent:
                value = self._close(stack.pop())
            elif kind is AliasEvent:
                value = self._alias(event.anchor)
            else:
                raise _NotFast
            if not stack:
                return value
            frame = stack[-1]
            container = frame[0]
            if type(container) is list:
                container.append(value)
            elif frame[1] is _OPEN:
                if kind is not ScalarEvent or type(value) is not str or value in container:
                    raise _NotFast  # keys: new strings only (duplicates get the node path's message)
                frame[1] = value
            else:
                container[frame[1]] = value
                frame[1] = _OPEN

    def _scalar(self, event: Any) -> Any:
        self._count += 1
        value: str = event.value
        if self._escapes and not _deliverable(value):
            raise _NotFast
        tag = event.tag
        if tag is None or tag == "!":
            key = (value, event.implicit)
            tag = self._tags.get(key)
            if tag is None:
                tag = self._tags[key] = self._resolve(yaml.ScalarNode, value, event.implicit)
        if tag == _STR_TAG:
            result: Any = value
        elif tag in _SCALAR_TAGS:
            result = _SCALAR_TAGS[tag](self._constructor, yaml.ScalarNode(tag, value))
        else:
            raise _NotFast
        if event.tag is None and len(self._plain) < _PLAIN_CACHE:
            self._plain[(value, event.implicit)] = result  # immutable: shared safely
        if event.anchor is not None:
            self._anchor(event.anchor, result, 1)
        return result

    def _open(self, event: Any, stack: list[list[Any]]) -> None:
        if (event.tag is not None and event.tag != "!") or len(stack) >= MAX_DEPTH - 2:
            raise _NotFast
        self._count += 1
        container: Any = {} if type(event) is MappingStartEvent else []
        if event.anchor is not None:
            self._anchor(event.anchor, _OPEN, 0)
        stack.append([container, _OPEN, event.anchor, self._count - 1])

    def _close(self, frame: list[Any]) -> Any:
        container, pending, anchor, before = frame
        if pending is not _OPEN:
            raise _NotFast  # a key without a value: cannot come from a parser, but be sure
        if anchor is not None:
            self._anchors[anchor] = (container, self._count - before)
        return container

    def _anchor(self, anchor: str, value: Any, size: int) -> None:
        if anchor in self._anchors:
            raise _NotFast  # a duplicate anchor: the composer's error
        self._anchors[anchor] = (value, size)

    def _alias(self, anchor: str) -> Any:
        value, size = self._anchors.get(anchor, (_OPEN, 0))
        if value is _OPEN:
            raise _NotFast  # undefined or recursive
        self._count += size
        if self._count > MAX_NODES:
            raise _NotFast
        return value


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
    root: yaml.Node | None = None
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
    except ValueError as error:  # the constructor's own check of a date: 2001-02-30, month 13
        message = f"invalid YAML: not a real date or time ({one_line(str(error))})"
        raise WorkflowLoadError(message, source, _bad_timestamp_line(root)) from None
    finally:
        if loader is not None:
            loader.dispose()
    return root, data


def _bad_timestamp_line(root: yaml.Node | None) -> int | None:
    """Line of the first date the constructor refuses (dates are the only scalars it can refuse so)."""
    constructor = SafeConstructor()
    stack = [root] if root is not None else []
    while stack:
        node = stack.pop()
        if isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:timestamp":
            try:
                constructor.construct_yaml_timestamp(node)
            except ValueError:
                return int(node.start_mark.line) + 1
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(reversed(node.value))
        elif isinstance(node, yaml.MappingNode):
            stack.extend(item for pair in reversed(node.value) for item in reversed(pair))
    return None


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
