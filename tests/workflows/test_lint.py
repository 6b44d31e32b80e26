"""Static template checks: what a run would fail on is found before anything runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from devctl_dist.workflows.lint import WORKFLOW_ENV, lint_workflow
from devctl_dist.workflows.loader import load_workflow_text

DEVCTL = [str(Path(sys.executable).with_name("devctl"))]


def problems(data: dict[str, Any], variables: tuple[str, ...] = ()) -> list[str]:
    workflow = load_workflow_text(yaml.safe_dump(data, sort_keys=False), "wf.yaml")
    return [str(problem) for problem in lint_workflow(workflow, variables)]


def step(name: str, command: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "command": command, **extra}


def test_known_names_pass() -> None:
    data = {
        "vars": {"who": "me"},
        "env": {"CHANNEL": "{{ who }}-{{ env.HOME }}"},
        "steps": [
            step("a", "!echo {{ who | quote }} {{ vars.who }} {{ env['HOME'] }}"),
            step("b", "!echo {% for i in range(3) %}{{ i }}{% endfor %} {{ results['a'].stdout }}"),
            step("c", "!echo {{ results.a }} {{ results.get('b') }}", condition="who == 'me'"),
            step("d", "!echo hi", condition="true", params={"tag": "{{ version }}"}),
        ],
    }
    assert problems(data, variables=("version",)) == []


def test_undefined_variables_are_named_in_every_place_a_run_renders() -> None:
    data = {
        "env": {"A": "{{ ghost_env }}"},
        "steps": [
            step("cmd", "!echo {{ ghost1 }}"),
            step("cond", "!true", condition="n > 5"),
            step("tmpl-cond", "!true", condition="{{ flag }}"),
            step("param", "!true", params={"p": "{{ ghost2 }}"}),
            step("step-env", "!true", env={"X": "{{ ghost3 }}"}),
            step("plugin", "echo {{ ghost4 }}"),
        ],
    }
    assert problems(data) == [
        "workflow env: undefined variable 'ghost_env'",
        "step 'cmd': undefined variable 'ghost1'",
        "step 'cond': undefined variable 'n'",
        "step 'tmpl-cond': undefined variable 'flag'",
        "step 'param': undefined variable 'ghost2'",
        "step 'step-env': undefined variable 'ghost3'",
        "step 'plugin': undefined variable 'ghost4'",
    ]
    assert problems({"steps": [step("cond", "!true", condition="n > 5")]}, variables=("n",)) == []


def test_names_guarded_by_default_or_defined_and_local_names_pass() -> None:
    data = {
        "steps": [
            step("a", "!echo {{ tag | default('latest') }} {{ other | d('x') }}"),
            step("b", "!echo {% if maybe is defined %}{{ maybe }}{% endif %}"),
            step("c", "!echo {% set x = 1 %}{{ x }} {% for k in [1] %}{{ k }}{% endfor %}"),
        ]
    }
    assert problems(data) == []


def test_syntax_errors_and_unknown_filters() -> None:
    data = {
        "steps": [
            step("a", "!echo {{ oops "),
            step("b", "!echo {{ x | nosuchfilter }}", params={}),
            step("c", "!true", condition="n >"),
        ]
    }
    found = problems(data, variables=("x", "n"))
    assert len(found) == 3
    assert found[0].startswith("step 'a': template syntax error: ")
    assert found[1] == "step 'b': template syntax error: No filter named 'nosuchfilter'."
    assert found[2].startswith("step 'c': template syntax error: ")


def test_results_must_name_a_step() -> None:
    data = {"steps": [step("a", "!true"), step("b", "!echo {{ results['nope'].stdout }} {{ results.gone }}")]}
    assert problems(data) == [
        "step 'b': results['nope'] names no step",
        "step 'b': results['gone'] names no step",
    ]


def test_in_a_graph_results_must_come_from_an_ancestor() -> None:
    data = {
        "steps": [
            step("root", "!true"),
            step("mid", "!true", depends_on=["root"]),
            step("leaf", "!echo {{ results['root'] }} {{ results['mid'] }}", depends_on=["mid"]),
            step("side", "!echo {{ results['mid'].stdout }}", condition="results.get('leaf')"),
        ]
    }
    assert problems(data) == [
        "step 'side': results['leaf'] is not available (not a dependency of 'side')",
        "step 'side': results['mid'] is not available (not a dependency of 'side')",
    ]


def test_a_block_inside_a_graph_sees_its_own_ancestors_and_its_inner_dependencies() -> None:
    inner = [
        step("i1", "!echo {{ results['root'] }}"),
        step("i2", "!echo {{ results['i1'] }}", depends_on=["i1"]),
        step("i3", "!echo {{ results['i1'] }} {{ results['other'] }}"),
    ]
    data = {
        "steps": [
            step("root", "!true"),
            step("other", "!true"),
            {"name": "block", "depends_on": ["root"], "parallel": {"steps": inner}},
        ]
    }
    assert problems(data) == [
        "step 'i3': results['i1'] is not available (not a dependency of 'i3')",
        "step 'i3': results['other'] is not available (not a dependency of 'i3')",
    ]


def test_a_sequence_step_reads_only_the_steps_before_it() -> None:
    """A later step has no result yet, and a sibling in the same block runs alongside: the run would fail."""
    inner = [
        step("c", "!echo {{ results['a'] }} {{ results['d'] }}"),
        step("d", "!true"),
        step("e", "!echo {{ results['d'] }}", depends_on=["d"]),
    ]
    data = {
        "steps": [
            step("a", "!echo {{ results['b'].stdout }}"),
            step("b", "!echo {{ results['a'].stdout }}"),
            {"name": "block", "parallel": {"steps": inner}},
            step("f", "!echo {{ results['c'] }} {{ results['block'] }} {{ results['e'] }}"),
        ]
    }
    assert problems(data) == [
        "step 'a': results['b'] is not available ('b' does not run before 'a')",
        "step 'c': results['d'] is not available ('d' does not run before 'c')",
    ]


def test_reading_a_later_step_fails_the_run_as_validate_says(tmp_path: Path) -> None:
    data = {"steps": [step("a", "!echo {{ results['b'].stdout }}"), step("b", "!echo hi")]}
    path = tmp_path / "later.yaml"
    path.write_text(yaml.safe_dump(data))
    checked = subprocess.run([*DEVCTL, "validate", str(path)], capture_output=True, text=True)
    ran = subprocess.run([*DEVCTL, "run", str(path), "--output", "plain"], capture_output=True, text=True)
    assert checked.returncode == 2
    assert "results['b'] is not available ('b' does not run before 'a')" in checked.stderr
    assert ran.returncode == 1
    assert "FAIL a" in ran.stdout and "results['b'] is not available" in ran.stdout


def test_sequences_and_hooks_may_read_any_step() -> None:
    data = {
        "steps": [step("a", "!true"), {"parallel": {"steps": [step("b", "!echo {{ results['a'] }}")]}}],
        "on_failure": [step("notify", "!echo {{ results['b'].stderr }} {{ results['parallel-1'] }}")],
    }
    assert problems(data) == []


def test_the_workflow_env_cannot_read_results() -> None:
    data = {"env": {"A": "{{ results['a'] }}"}, "steps": [step("a", "!true")]}
    found = lint_workflow(load_workflow_text(yaml.safe_dump(data), "wf.yaml"))
    assert [(p.step, p.message) for p in found] == [
        (WORKFLOW_ENV, "results['a'] is not available (no step has run yet)")
    ]


@pytest.mark.parametrize("command", ["!echo ${HOME} {a,b}", "!awk '{print $1}'", "echo"])
def test_text_that_is_not_a_template_passes(command: str) -> None:
    assert problems({"steps": [step("a", command)]}) == []


@pytest.mark.parametrize(
    ("extra", "found"),
    [
        ({}, []),
        ({"condition": "yes"}, []),
        ({"condition": "n > 5"}, ["step 'a': undefined variable 'n'"]),
        ({"condition": "n >"}, ["step 'a': template syntax error: unexpected 'end of template'"]),
        ({"params": {"p": "{{ n }}", "q": 3}}, ["step 'a': undefined variable 'n'"]),
        ({"env": {"E": "{{ n }}"}}, ["step 'a': undefined variable 'n'"]),
    ],
)
def test_files_without_templates_skip_jinja_and_lose_no_problem(
    extra: dict[str, Any], found: list[str]
) -> None:
    """Only a file with nothing Jinja could read is answered without Jinja2 (in a fresh process)."""
    data = {"steps": [step("a", "!true", **extra)]}
    assert problems(data) == found
    code = (
        "import sys, yaml\n"
        "from devctl_dist.workflows.lint import lint_workflow\n"
        "from devctl_dist.workflows.loader import load_workflow_text\n"
        f"workflow = load_workflow_text(yaml.safe_dump({data!r}), 'wf.yaml')\n"
        "lint_workflow(workflow)\n"
        "print('jinja2' in sys.modules)\n"
    )
    imported = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert imported.strip() == str(bool(found))
