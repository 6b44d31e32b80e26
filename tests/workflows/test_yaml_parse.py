"""``load_yaml`` (data straight from libyaml's events) agrees with ``parse_yaml`` (the node tree).

The loader reads every valid file through ``load_yaml`` and composes the tree only to
place an error, so the two must give the same data, or the same error, for any text.
"""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devctl_dist.core.exceptions import WorkflowLoadError
from devctl_dist.workflows import yaml_parse
from devctl_dist.workflows.yaml_parse import load_yaml, parse_yaml

pytestmark = pytest.mark.skipif(yaml_parse.CParser is None, reason="needs libyaml")


def outcome(function: Any, text: str) -> tuple[str, str]:
    """What a reader made of ``text``: ("ok", repr of (document found, data)) or ("error", message)."""
    try:
        result = function(text, "w.yaml")
    except WorkflowLoadError as error:
        return "error", str(error)
    found, data = (result[0] is not None, result[1]) if function is parse_yaml else result
    return "ok", repr((found, data))  # repr: NaN equals itself


def assert_same(text: str) -> None:
    assert outcome(load_yaml, text) == outcome(parse_yaml, text), text


SHAPES = [
    "",
    "# only a comment\n",
    "~\n",
    "- a\n- b\n",
    "steps: [{name: a, command: '!true'}]\n",
    "vars: {t: &t '!true'}\nsteps:\n- {name: a, command: *t}\n- {name: b, command: *t, depends_on: a}\n",
    "a: &x {k: [1, 2.5, .inf, .nan, -0x1f, 0o7, 1_000, yes, No, ~, null, 2024-01-02, 2024-01-02T03:04:05Z]}\n"
    "b: *x\n",
    "a: 1\na: 2\n",  # duplicate key
    "a: 1\n'a': 2\n",  # the same key, quoted
    "1: a\n0x1: b\n",  # keys that construct alike
    "on: push\n",  # a bool key
    ".nan: a\n.nan: b\n",
    "base: &b {x: 1}\nchild:\n  <<: *b\n  y: 2\n",  # merge key
    "a: !!str 1\nb: !!int '2'\n",  # explicit tags
    "a: !custom x\n",
    "a: ! 12\n",  # the non-specific tag
    "a: !!set {x, y}\n",
    "a: *nowhere\n",  # undefined alias
    "a: &r [*r]\n",  # recursive alias
    "a: &r [1, { *r}]\n",  # a recursive alias as a key (the size check once walked it forever)
    "a: &d 1\nb: &d 2\nc: *d\n",  # duplicate anchor
    "--- a\n--- b\n",  # two documents
    "[a, b]: c\n",  # a complex key
    "{a: b}: c\n",
    'a: "\\0"\n',  # an escaped NUL
    'a: "\\ud800"\n',  # a lone surrogate
    "a: [" * 120 + "]" * 120 + "\n",  # too deep
    "a: &a [x, x, x, x, x, x, x, x, x]\n"
    + "".join(
        f"{name}: &{name} [{', '.join([f'*{prev}'] * 9)}]\n"
        for prev, name in zip("abcdefgh", "bcdefghi", strict=True)
    ),  # an alias bomb
    "a: [1, 2\n",  # a syntax error
    "a: 1\nb: 2001-02-30\n",  # a date that does not exist
    "a: b: c\n",
    "x:\n\t- a\n",  # a tab: only the pure-Python loader judges it
]


@pytest.mark.parametrize("text", SHAPES)
def test_event_builder_agrees_with_the_node_tree(text: str) -> None:
    assert_same(text)


def test_the_fast_path_takes_common_files(monkeypatch: pytest.MonkeyPatch) -> None:
    """A plain workflow never reaches the node path (that is where the time goes)."""

    def refuse(text: str, source: str) -> Any:
        raise AssertionError("composed a node tree for a valid file")

    monkeypatch.setattr(yaml_parse, "parse_yaml", refuse)
    found, data = load_yaml("vars: {t: &t '!true'}\nsteps:\n- {name: a, command: *t, timeout: 5}\n", "w")
    assert found and data == {
        "vars": {"t": "!true"},
        "steps": [{"name": "a", "command": "!true", "timeout": 5}],
    }


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=8),
    st.sampled_from(["yes", "off", "~", "0x1A", "1_0", "2020-02-02", "<<", "=", "!true", "{{ x }}", "1e3"]),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=10,
)
VALID = (
    "name: demo\nvars: {x: 1, t: &t '!true'}\nparallel: {max_concurrent: 2}\nsteps:\n"
    '  - name: a\n    command: "!echo {{ x }}"\n    env: {A: b, N: 3}\n'
    "  - parallel:\n      steps:\n        - {name: b, command: *t, depends_on: a}\n"
    "  - name: c\n    command: '!false'\n    depends_on: [a]\n    timeout: 5\n"
)
edit = st.tuples(
    st.integers(0, len(VALID)), st.integers(0, 3), st.text(alphabet="{}[]:!&*|>-#'\"\n \\x0%<.~t", max_size=3)
)


def fuzz(examples: int) -> settings:
    return settings(
        max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )


@fuzz(600)
@given(document=values)
def test_generated_documents_agree(document: Any) -> None:
    assert_same(yaml.safe_dump(document, allow_unicode=True))


@fuzz(1500)
@given(edits=st.lists(edit, min_size=1, max_size=4))
def test_mutated_documents_agree(edits: list[tuple[int, int, str]]) -> None:
    text = VALID
    for position, cut, insert in edits:
        text = text[:position] + insert + text[position + cut :]
    assert_same(text)
