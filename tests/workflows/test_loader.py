"""The loader: valid files become schemas; every bad file is one line with file, line and step."""

from __future__ import annotations

from pathlib import Path

import pytest

from devctl_dist.core.exceptions import DevctlError, WorkflowLoadError, WorkflowValidationError
from devctl_dist.workflows.loader import load_workflow, load_workflow_text


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run in tmp_path so messages show ``deploy.yaml`` just as a user typed it."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def error_for(directory: Path, text: str, name: str = "deploy.yaml") -> WorkflowLoadError:
    (directory / name).write_text(text)
    with pytest.raises(WorkflowLoadError) as caught:
        load_workflow(name)
    return caught.value


DEPLOY = """\
name: deploy
description: ship it
parallel:
  max_concurrent: 4

steps:
  - name: Validate
    command: "!echo validating"

  - name: build
    command: "!make"
    on_failure: continue

  - parallel:
      name: Deploy all services
      steps:
        - name: Deploy API
          command: argocd apps sync
          params: {app: api}
"""


def test_valid_file_loads(in_tmp: Path) -> None:
    (in_tmp / "deploy.yaml").write_text(DEPLOY)
    workflow = load_workflow(Path("deploy.yaml"))
    assert workflow.name == "deploy"
    assert workflow.parallel.max_concurrent == 4
    assert [step.display_name for step in workflow.steps] == ["Validate", "build", "Deploy all services"]
    block = workflow.steps[2].parallel
    assert block is not None and block.steps[0].params == {"app": "api"}


# Each case: file text, expected message. Line numbers are 1-based lines of deploy.yaml.
CASES = {
    "unknown key in a block step": (
        DEPLOY.replace("          command: argocd", "          comand: argocd"),
        "deploy.yaml:18: step 'Deploy API': unknown key 'comand' (did you mean 'command'?)",
    ),
    "bad step on_failure": (
        DEPLOY.replace("on_failure: continue", "on_failure: explode"),
        "deploy.yaml:12: step 'build': on_failure must be one of fail, continue, skip (got 'explode')",
    ),
    "global max_concurrent below 1": (
        DEPLOY.replace("max_concurrent: 4", "max_concurrent: -2"),
        "deploy.yaml:4: parallel.max_concurrent must be >= 1 (got -2)",
    ),
    "block on_failure": (
        DEPLOY.replace(
            "      name: Deploy all services", "      name: Deploy all services\n      on_failure: boom"
        ),
        "deploy.yaml:16: step 'Deploy all services': parallel.on_failure must be one of "
        "fail_all, continue, complete_running (got 'boom')",
    ),
    "block timeout not positive": (
        DEPLOY.replace(
            "      name: Deploy all services", "      name: Deploy all services\n      timeout: 0"
        ),
        "deploy.yaml:16: step 'Deploy all services': parallel.timeout must be > 0 (got 0)",
    ),
    "unknown key in global parallel": (
        DEPLOY.replace("max_concurrent: 4", "max_concurent: 4"),
        "deploy.yaml:4: unknown key 'max_concurent' in 'parallel' (did you mean 'max_concurrent'?)",
    ),
    "unknown top-level key wins over the missing one": (
        "name: x\nstepz:\n  - name: a\n    command: '!true'\n",
        "deploy.yaml:2: unknown key 'stepz' (did you mean 'steps'?)",
    ),
    "neither command nor parallel": (
        "steps:\n  - name: deploy\n    depends_on: [build]\n",
        "deploy.yaml:2: step 'deploy': a step must have either 'command' or 'parallel'",
    ),
    "both command and parallel": (
        "steps:\n  - name: both\n    command: '!true'\n    parallel:\n      steps:\n"
        "        - name: inner\n          command: '!true'\n",
        "deploy.yaml:2: step 'both': a step cannot have both 'command' and 'parallel'",
    ),
    "command step without a name": (
        "steps:\n  - name: a\n    command: '!true'\n  - command: '!false'\n",
        "deploy.yaml:4: step #2: a command step needs a 'name'",
    ),
    "a step that is a string": (
        "steps:\n  - echo hi\n",
        "deploy.yaml:2: step #1: expected a mapping with 'name' and 'command' (got 'echo hi')",
    ),
    "hook step": (
        "steps:\n  - name: a\n    command: '!true'\non_failure:\n  - name: page\n    command: '!true'\n"
        "    retries: -1\n",
        "deploy.yaml:7: step 'page': retries must be >= 0 (got -1)",
    ),
    "unnamed hook step": (
        "steps:\n  - name: a\n    command: '!true'\non_success:\n  - retries: 1\n",
        "deploy.yaml:5: on_success step #1: a step must have either 'command' or 'parallel'",
    ),
    "wrong type": (
        "steps:\n  - name: a\n    command: '!true'\n    timeout: soon\n",
        "deploy.yaml:4: step 'a': timeout must be a valid number, "
        "unable to parse string as a number (got 'soon')",
    ),
    "dependency not a string": (
        "steps:\n  - name: a\n    command: '!true'\n    depends_on: [1]\n",
        "deploy.yaml:4: step 'a': depends_on[0] must be a valid string (got 1)",
    ),
    "params key not a string": (
        "steps:\n  - name: a\n    command: '!true'\n    params:\n      1: x\n",
        "deploy.yaml:5: step 'a': params keys must be strings (got 1)",
    ),
    "vars not a mapping": (
        "vars: [a, b]\nsteps:\n  - name: a\n    command: '!true'\n",
        "deploy.yaml:1: vars must be a mapping (got a list)",
    ),
    "missing steps": ("name: x\n", "deploy.yaml:1: missing required key 'steps'"),
    "empty steps": ("name: x\nsteps: []\n", "deploy.yaml:2: steps must not be empty"),
    "null steps": ("name: x\nsteps:\n", "deploy.yaml:2: steps must be a valid list (got null)"),
    "empty block": (
        "steps:\n  - parallel:\n      name: B\n      steps: []\n",
        "deploy.yaml:4: step 'B': parallel.steps must not be empty",
    ),
    "empty file": ("", "deploy.yaml: file is empty (expected a mapping with 'steps')"),
    "only comments": ("# todo\n\n", "deploy.yaml: file is empty (expected a mapping with 'steps')"),
    "top-level list": (
        "- name: a\n  command: x\n",
        "deploy.yaml:1: top level must be a mapping with 'steps' (got a list)",
    ),
    "top-level scalar": (
        "\nhello\n",
        "deploy.yaml:2: top level must be a mapping with 'steps' (got 'hello')",
    ),
    "duplicate key": (
        "name: x\nsteps:\n  - name: a\n    command: '!true'\n    name: b\n",
        "deploy.yaml:5: duplicate key 'name' (first defined on line 3)",
    ),
    "unclosed flow list": (
        "steps:\n  - name: a\n    depends_on: [x\n  - name: b\n",
        "deploy.yaml:4: invalid YAML: expected ',' or ']', but got ':' "
        "(while parsing a flow sequence at line 3)",
    ),
    "bad indentation": (
        "steps:\n  - name: a\n   command: x\n",
        "deploy.yaml:3: invalid YAML: expected <block end>, but found '<block mapping start>' "
        "(while parsing a block collection at line 2); check the indentation",
    ),
    "tab indentation": (
        "steps:\n\t- name: a\n",
        "deploy.yaml:2: invalid YAML: found character '\\t' that cannot start any token",
    ),
    "unquoted shell command": (
        "steps:\n  - name: a\n    command: !echo hi\n",
        "deploy.yaml:3: invalid YAML: could not determine a constructor for the tag '!echo'; "
        'quote shell commands: command: "!echo ..."',
    ),
    "two documents": (
        "steps: []\n---\nsteps: []\n",
        "deploy.yaml:2: invalid YAML: expected a single document in the stream but found another document",
    ),
    "nested too deeply": (
        "steps: " + "[" * 5000 + "]" * 5000 + "\n",
        "deploy.yaml:1: invalid YAML: nested more than 100 levels deep",
    ),
    "python tag refused by SafeLoader": (
        "name: !!python/object/apply:os.system ['true']\nsteps: []\n",
        "deploy.yaml:1: invalid YAML: could not determine a constructor for the tag "
        "'tag:yaml.org,2002:python/object/apply:os.system'",
    ),
}


@pytest.mark.parametrize(("text", "expected"), list(CASES.values()), ids=list(CASES))
def test_bad_file_is_one_exact_line(in_tmp: Path, text: str, expected: str) -> None:
    error = error_for(in_tmp, text)
    assert str(error) == expected
    assert "\n" not in str(error)
    assert error.path == "deploy.yaml"
    assert isinstance(error, DevctlError) and error.exit_code == 2


def test_validation_errors_carry_the_line(in_tmp: Path) -> None:
    error = error_for(in_tmp, DEPLOY.replace("on_failure: continue", "on_failure: explode"))
    assert isinstance(error, WorkflowValidationError)
    assert error.line == 12


def test_missing_file_and_directory(in_tmp: Path) -> None:
    with pytest.raises(WorkflowLoadError, match=r"^nope\.yaml: file not found$"):
        load_workflow("nope.yaml")
    (in_tmp / "flows").mkdir()
    with pytest.raises(WorkflowLoadError, match=r"^flows: is a directory, not a workflow file$"):
        load_workflow("flows")


def test_not_utf8_names_the_line(in_tmp: Path) -> None:
    (in_tmp / "deploy.yaml").write_bytes(b"name: x\nsteps:\n  - name: caf\xe9\n")
    with pytest.raises(WorkflowLoadError) as caught:
        load_workflow("deploy.yaml")
    assert str(caught.value) == "deploy.yaml:3: not UTF-8 text (byte 28)"


def test_utf8_bom_and_unicode_names_load(in_tmp: Path) -> None:
    text = "name: café\nsteps:\n  - name: déployer\n    command: '!echo ok'\n"
    (in_tmp / "deploy.yaml").write_bytes(b"\xef\xbb\xbf" + text.encode())
    assert load_workflow("deploy.yaml").steps[0].name == "déployer"


def test_absolute_path_is_named_as_given(tmp_path: Path) -> None:
    path = tmp_path / "deploy.yaml"
    path.write_text("steps:\n  - name: a\n    command: '!true'\n    retries: -3\n")
    with pytest.raises(WorkflowValidationError) as caught:
        load_workflow(path)
    assert str(caught.value) == f"{path}:4: step 'a': retries must be >= 0 (got -3)"


def test_load_text_uses_the_source_name() -> None:
    with pytest.raises(WorkflowValidationError) as caught:
        load_workflow_text("steps:\n  - name: a\n    comand: x\n", "<stdin>")
    assert str(caught.value) == "<stdin>:3: step 'a': unknown key 'comand' (did you mean 'command'?)"


def test_first_error_in_the_file_is_reported(in_tmp: Path) -> None:
    text = "steps:\n  - name: a\n    command: '!true'\n    timeout: -1\nparallel:\n  max_concurrent: 0\n"
    assert str(error_for(in_tmp, text)) == "deploy.yaml:4: step 'a': timeout must be > 0 (got -1)"


def test_long_values_are_shortened(in_tmp: Path) -> None:
    text = "steps:\n  - name: a\n    command: '!true'\n    on_failure: " + "z" * 300 + "\n"
    message = str(error_for(in_tmp, text))
    assert message.startswith(
        "deploy.yaml:4: step 'a': on_failure must be one of fail, continue, skip (got 'zzz"
    )
    assert message.endswith("...')")
    assert len(message) < 160


def test_yaml_anchors_and_merge_keys_work(in_tmp: Path) -> None:
    text = """\
steps:
  - &base
    name: one
    command: "!echo one"
    retries: 2
    timeout: 30
  - <<: *base
    name: two
    command: "!echo two"
"""
    (in_tmp / "deploy.yaml").write_text(text)
    steps = load_workflow("deploy.yaml").steps
    assert [(s.name, s.command, s.retries, s.timeout) for s in steps] == [
        ("one", "!echo one", 2, 30),
        ("two", "!echo two", 2, 30),
    ]


def test_merged_key_errors_point_into_the_file(in_tmp: Path) -> None:
    text = (
        "steps:\n  - &base\n    name: one\n    command: '!true'\n  - <<: *base\n    name: two\n    tries: 3\n"
    )
    expected = "deploy.yaml:7: step 'two': unknown key 'tries' (did you mean 'retries'?)"
    assert str(error_for(in_tmp, text)) == expected


def test_seed_parallel_block_example_loads(in_tmp: Path) -> None:
    text = """\
steps:
  - name: Validate
    command: "!echo 'validating'"

  - parallel:
      name: Deploy all services
      on_failure: fail_all  # or continue, complete_running
      timeout: 600
      steps:
        - name: Deploy API
          command: argocd apps sync
          params: {app: api}
        - name: Deploy Worker
          command: argocd apps sync
          params: {app: worker}

  - name: Verify
    command: k8s pods list
"""
    (in_tmp / "seed.yaml").write_text(text)
    workflow = load_workflow("seed.yaml")
    assert workflow.is_sequential is False and workflow.is_dag is False
    block = workflow.steps[1].parallel
    assert block is not None
    assert (block.name, block.on_failure, block.timeout) == ("Deploy all services", "fail_all", 600)


def test_old_sequential_workflow_loads(in_tmp: Path) -> None:
    text = """\
name: maintenance
description: nightly cleanup
version: 1.2
vars:
  retention: 7
env:
  PORT: 8080
  DEBUG: true
steps:
  - name: Prune
    description: drop old rows
    command: "!psql -c 'delete from logs where age > {{ retention }}' && echo done || echo failed >&2"
    condition: "{{ retention > 0 }}"
    timeout: 120
    retries: 2
    on_failure: continue
  - name: Report
    command: report send
    params: {to: ops}
    on_failure: skip
on_success:
  - name: Notify
    command: "!echo ok"
on_failure:
  - name: Page
    command: "!echo paged"
"""
    (in_tmp / "old.yaml").write_text(text)
    workflow = load_workflow("old.yaml")
    assert workflow.is_sequential
    assert (workflow.version, workflow.env) == ("1.2", {"PORT": "8080", "DEBUG": "true"})
    assert [s.on_failure for s in workflow.steps] == ["continue", "skip"]
    assert [s.name for s in workflow.on_success + workflow.on_failure] == ["Notify", "Page"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("steps:\n  - name: a\n    command: '!true'\n    timout: 3\n", "(did you mean 'timeout'?)"),
        ("steps:\n  - name: a\n    command: '!true'\n    depend_on: [b]\n", "(did you mean 'depends_on'?)"),
        ("parallel: {fail_fas: true}\nsteps: [{name: a, command: '!true'}]\n", "(did you mean 'fail_fast'?)"),
        ("steps:\n  - parallel: {on_failur: x, steps: [{name: a, command: '!true'}]}\n", "'on_failure'?)"),
    ],
)
def test_unknown_key_suggests_the_closest_key_of_its_own_mapping(text: str, expected: str) -> None:
    with pytest.raises(WorkflowValidationError) as caught:
        load_workflow_text(text, "w.yaml")
    assert str(caught.value).endswith(expected)


def test_unknown_key_far_from_any_gets_no_suggestion() -> None:
    with pytest.raises(WorkflowValidationError) as caught:
        load_workflow_text("steps:\n  - name: a\n    command: '!true'\n    zzz: 1\n", "w.yaml")
    assert str(caught.value) == "w.yaml:4: step 'a': unknown key 'zzz'"


def test_unnamed_parallel_blocks_get_distinct_names() -> None:
    block = "  - parallel: {steps: [{name: %s, command: '!true'}]}\n"
    workflow = load_workflow_text("steps:\n" + block % "a" + block % "b", "w.yaml")
    assert [step.display_name for step in workflow.steps] == ["parallel-1", "parallel-2"]


def test_locate_step_finds_flow_style_steps_too(tmp_path: Path) -> None:
    """Errors found after loading (cycles, duplicates) point at the step, however it is written."""
    from devctl_dist.workflows.loader import locate_step

    path = tmp_path / "flow.yaml"
    path.write_text(
        "steps:\n"
        '  - {name: a, command: "!true"}\n'
        "  - name: blk\n"
        "    parallel:\n"
        '      steps: [{name: x, command: "!true"}, {name: a, command: "!true"}]\n'
    )
    assert locate_step(path, "a") == 2
    assert locate_step(path, "a", occurrence=-1) == 5
    assert locate_step(path, "blk") == 3
    assert locate_step(path, "missing") is None
