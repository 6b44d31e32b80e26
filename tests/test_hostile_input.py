"""Hostile input through the real CLI (in-process): one line, exit 0 or 2, never a traceback, quickly.

Every shape that once reached a traceback or ``internal error`` is a regression
test; hypothesis then feeds thousands of generated documents, mutated valid
documents and raw bytes through ``validate``, ``run --dry-run`` and ``graph``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devctl_dist.cli import cli

COMMANDS = (["validate"], ["run", "--dry-run"], ["graph"])
MAX_SECONDS = 2.0
STEP = "  - name: a\n    command: '!true'\n"


def invoke(args: list[str]) -> tuple[int, list[str], float]:
    began = time.monotonic()
    result = CliRunner().invoke(cli, args)
    elapsed = time.monotonic() - began
    return result.exit_code, result.stderr.splitlines(), elapsed


def check_command(command: list[str], path: Path) -> int:
    """Exit 0 or 2, one error line (or warnings only), no traceback, under 2 s."""
    code, lines, elapsed = invoke([*command, str(path)])
    assert code in (0, 2), (command, code, lines)
    assert not any("Traceback" in line or "internal error" in line for line in lines), lines
    if code == 2:
        assert len(lines) == 1 and lines[0].startswith("devctl: error: "), lines
    else:
        assert all(line.startswith("devctl: warning: ") for line in lines), lines
    assert elapsed < MAX_SECONDS, (command, elapsed)
    return code


def check_all_commands(path: Path) -> list[int]:
    return [check_command(command, path) for command in COMMANDS]


ALIAS_BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{name}: &{name} [{', '.join([f'*{prev}'] * 9)}]\n"
    for prev, name in zip("abcdefgh", "bcdefghi", strict=True)
)

REGRESSIONS = {
    "control byte in a comment": (b"steps:\n" + STEP.encode() + b"# a \x01 b\n", "control character #x0001"),
    "control byte in a value": (b"steps:\n  - name: a\x02\n    command: '!true'\n", "control character"),
    "escaped control char in a name": (
        b'steps:\n  - name: "a\\x1b[31m"\n    command: "!true"\n',
        "contains a control character",
    ),
    "lone surrogate in a name": (b'steps:\n  - name: "a\\udc80"\n    command: "!true"\n', "lone surrogate"),
    "NUL in a command": (b'steps:\n  - name: a\n    command: "!echo \\0"\n', "NUL character"),
    "env key with =": (b"steps:\n" + STEP.encode() + b"    env: {'A=B': x}\n", "'A=B'"),
    "env key with NUL": (b"steps:\n" + STEP.encode() + b'    env: {"A\\0B": x}\n', "NUL character"),
    "empty env key": (b"env: {'': x}\nsteps:\n" + STEP.encode(), "invalid environment variable name ''"),
    "env value with NUL": (b"steps:\n" + STEP.encode() + b'    env: {A: "x\\0y"}\n', "NUL character"),
    "retries 1100": (b"steps:\n" + STEP.encode() + b"    retries: 1100\n    retry_delay: 0\n", "<= 100"),
    "retry_delay inf": (b"steps:\n" + STEP.encode() + b"    retry_delay: .inf\n", "finite"),
    "timeout inf": (b"steps:\n" + STEP.encode() + b"    timeout: .inf\n", "finite"),
    "timeout nan": (b"steps:\n" + STEP.encode() + b"    timeout: .nan\n", "timeout"),
    "timeout huge": (b"steps:\n" + STEP.encode() + b"    timeout: 1e300\n", "timeout must be <="),
    "block timeout inf": (
        b"steps:\n  - parallel: {timeout: .inf, steps: [{name: a, command: '!true'}]}\n",
        "finite",
    ),
    "rate_limit inf": (b"parallel: {rate_limit: .inf}\nsteps:\n" + STEP.encode(), "finite"),
    "shell command with nothing after !": (
        b"steps:\n  - {name: a, command: '!  '}\n",
        "step 'a': 'command' is empty (nothing after '!')",
    ),
    "retries true": (
        b"steps:\n" + STEP.encode() + b"    retries: true\n",
        "retries: expected a number, not true",
    ),
    "max_concurrent yes": (
        b"parallel: {max_concurrent: yes}\nsteps:\n" + STEP.encode(),
        "max_concurrent: expected a number, not true",
    ),
    "params set": (b"steps:\n" + STEP.encode() + b"    params: !!set {a, b}\n", "params must be a mapping"),
    "nested params set": (
        b"steps:\n" + STEP.encode() + b"    params: {x: !!set {a}}\n",
        "a set is not allowed",
    ),
    "params binary": (b"steps:\n" + STEP.encode() + b"    params: {x: !!binary aGk=}\n", "binary data"),
    "params non-string key": (
        b"steps:\n" + STEP.encode() + b"    params: {x: {1: a}}\n",
        "keys must be strings",
    ),
    "params nan": (b"steps:\n" + STEP.encode() + b"    params: {x: .nan}\n", "finite"),
    "vars set": (b"vars: {x: !!set {a}}\nsteps:\n" + STEP.encode(), "a set is not allowed"),
    "alias bomb": ((ALIAS_BOMB + "steps:\n" + STEP + "    env: {X: *i}\n").encode(), "document too large"),
    "deep nesting": (b"x: " + b"[" * 5000 + b"]" * 5000 + b"\nsteps:\n" + STEP.encode(), "more than 100"),
    "python tag": (b"steps: !!python/object:os.system [ls]\n", "invalid YAML"),
    # A recursive alias as a key made the size check walk the cycle until memory ran out.
    "recursive alias as a key": (b"x: &x [1, { *x}]\nsteps:\n" + STEP.encode(), "found unhashable key"),
    "recursive alias in params": (
        b"steps: &s\n  - name: a\n    command: '!true'\n    params: {x: *s}\n",
        "a value contains itself",
    ),
    "recursive alias in vars": (b"vars: &v {x: *v}\nsteps:\n" + STEP.encode(), "a value contains itself"),
    "impossible date": (
        b"steps:\n" + STEP.encode() + b"    params: {d: 2001-02-30}\n",
        "w.yaml:4: invalid YAML",
    ),
    "not utf-8": (b"steps:\n  - name: \xff\n", "not UTF-8"),
    "typo": (b"steps:\n" + STEP.encode() + b"    timout: 3\n", "(did you mean 'timeout'?)"),
}


@pytest.mark.parametrize("shape", list(REGRESSIONS))
def test_hostile_shape_is_one_line_and_exit_2(tmp_path: Path, shape: str) -> None:
    data, expected = REGRESSIONS[shape]
    path = tmp_path / "w.yaml"
    path.write_bytes(data)
    assert check_all_commands(path) == [2, 2, 2]
    _, lines, _ = invoke(["validate", str(path)])
    assert expected in lines[0], lines


def test_two_unnamed_blocks_are_valid_and_distinct(tmp_path: Path) -> None:
    block = "  - parallel: {steps: [{name: %s, command: '!true'}]}\n"
    path = tmp_path / "w.yaml"
    path.write_text("steps:\n" + block % "a" + block % "b")
    assert check_all_commands(path) == [0, 0, 0]
    result = CliRunner().invoke(cli, ["run", str(path), "-o", "plain"])
    assert result.exit_code == 0, result.output
    assert "parallel-1" in result.output and "parallel-2" in result.output


def test_huge_template_output_fails_the_step_with_one_line(tmp_path: Path) -> None:
    path = tmp_path / "w.yaml"
    path.write_text("steps:\n  - name: a\n    command: \"!echo {{ 'x'|center(2000000000) }}\"\n")
    began = time.monotonic()
    result = CliRunner().invoke(cli, ["run", str(path), "-o", "plain"])
    assert time.monotonic() - began < 10
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "would be too large" in result.output


# ---------------------------------------------------------------- generated input

FIELDS = [
    "name",
    "command",
    "params",
    "env",
    "timeout",
    "retries",
    "retry_delay",
    "on_failure",
    "condition",
    "depends_on",
    "parallel",
    "queue",
    "steps",
    "max_concurrent",
    "rate_limit",
    "vars",
    "fail_fast",
]
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=12),
    st.sampled_from(["!true", "!echo {{ x }}", "{{", "fail_all", "a", "b", ".inf", "-1", "1e999"]),
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=6), inner, max_size=5)
    ),
    max_leaves=8,
)
steps = st.dictionaries(st.sampled_from(FIELDS), values, max_size=6)
documents = st.fixed_dictionaries(
    {"steps": st.lists(steps, max_size=4)},
    optional={"parallel": values, "vars": values, "env": values, "name": scalars, "on_failure": values},
)
VALID = (
    "name: demo\nvars: {x: 1}\nparallel: {max_concurrent: 2}\nsteps:\n"
    '  - name: a\n    command: "!echo {{ x }}"\n    env: {A: b}\n'
    "  - parallel:\n      steps:\n        - {name: b, command: '!true', depends_on: a}\n"
    "  - name: c\n    command: '!false'\n    depends_on: [a]\n    timeout: 5\n"
)
# 5,100 inputs in all, each through one of the three commands (hypothesis picks which).
# Every command parses the same way; the regressions above go through all three.
commands = st.sampled_from(COMMANDS)


def fuzz(examples: int) -> settings:
    return settings(
        max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )


def check_bytes(tmp_path: Path, command: list[str], data: bytes) -> None:
    path = tmp_path / "fuzz.yaml"
    path.write_bytes(data)
    check_command(command, path)


raw = st.binary(max_size=300) | st.text(max_size=200).map(lambda text: text.encode("utf-8", "surrogatepass"))


@fuzz(2400)
@given(command=commands, data=raw)
def test_raw_bytes(tmp_path_factory: pytest.TempPathFactory, command: list[str], data: bytes) -> None:
    check_bytes(tmp_path_factory.getbasetemp(), command, data)


@fuzz(1000)
@given(command=commands, document=documents)
def test_generated_documents(
    tmp_path_factory: pytest.TempPathFactory, command: list[str], document: dict[str, Any]
) -> None:
    text = yaml.safe_dump(document, allow_unicode=True)
    check_bytes(tmp_path_factory.getbasetemp(), command, text.encode("utf-8", "surrogatepass"))


edit = st.tuples(
    st.integers(0, len(VALID)), st.integers(0, 3), st.text(alphabet="{}[]:!&*|>-#'\"\n \t\\x0%", max_size=3)
)


@fuzz(1700)
@given(command=commands, edits=st.lists(edit, min_size=1, max_size=4))
def test_mutated_valid_documents(
    tmp_path_factory: pytest.TempPathFactory, command: list[str], edits: list[tuple[int, int, str]]
) -> None:
    text = VALID
    for position, cut, insert in edits:
        text = text[:position] + insert + text[position + cut :]
    check_bytes(tmp_path_factory.getbasetemp(), command, text.encode("utf-8", "surrogatepass"))
