"""Secrets: which values are secret, and masking them in lines and results."""

from __future__ import annotations

from devctl_dist.core.events import RunListener
from devctl_dist.core.results import RunResult, StepResult, StepStatus
from devctl_dist.core.secrets import Masker, MaskingListener, is_secret_name, workflow_secrets
from devctl_dist.workflows.loader import load_workflow_text


def test_secret_names_by_suffix_any_case() -> None:
    for name in ("API_TOKEN", "db_password", "APP_SECRET", "SSH_KEY"):
        assert is_secret_name(name)
    for name in ("TOKENIZER", "KEYS", "monkey", "PASSWORD_FILE"):
        assert not is_secret_name(name)
    assert is_secret_name("plain", marked=["plain"])


def test_masker_masks_every_occurrence_longest_first() -> None:
    masker = Masker(["abc", "abcdef", "x"])  # "x" is too short to mask without garbling every line
    assert masker.mask("abcdef and abc and x") == "*** and *** and x"
    assert Masker().mask("nothing") == "nothing"
    assert Masker(["line1\nline2"]).mask("got line2") == "got ***"


def test_workflow_secrets_from_env_params_vars_and_marks() -> None:
    workflow = load_workflow_text(
        """
vars: {DEPLOY_TOKEN: vt-111, region: eu, pw: {value: marked-222, secret: true}}
env: {DB_PASSWORD: "{{ pw }}-suffix", HOME_DIR: /home}
steps:
  - name: a
    command: "!true"
    params: {api_key: pk-333, verbose: true}
    env: {PLAIN: visible, MY_SECRET: es-444}
  - parallel:
      steps:
        - {name: b, command: "!true", env: {note: {value: nested-555, secret: true}}}
""",
        "w.yaml",
    )
    from devctl_dist.workflows.templating import TemplateRenderer

    renderer = TemplateRenderer({**workflow.vars, "CLI_KEY": "cli-666"}, dict(workflow.env))
    masker = workflow_secrets(workflow, {"CLI_KEY": "cli-666"}, lambda t: renderer.render(t, step="s"))
    text = "vt-111 marked-222 marked-222-suffix pk-333 es-444 nested-555 cli-666 eu /home visible"
    assert masker.mask(text) == "*** *** *** *** *** *** *** eu /home visible"
    assert workflow.vars["pw"] == "marked-222"  # the mark is unwrapped: templates see the value


class Recorder(RunListener):
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.results: list[StepResult] = []
        self.runs: list[RunResult] = []

    def step_output(self, name: str, stream: str, line: str) -> None:
        self.lines.append(line)

    def step_finished(self, result: StepResult) -> None:
        self.results.append(result)

    def run_finished(self, result: RunResult) -> None:
        self.runs.append(result)


def test_masking_listener_hands_masked_copies_and_keeps_the_original() -> None:
    inner = Recorder()
    listener = MaskingListener(Masker(["hunter22"]), [inner])
    listener.step_output("s", "stdout", "password is hunter22")
    original = StepResult("s", False, stdout="hunter22\n", error="bad hunter22", status=StepStatus.FAILED)
    listener.step_finished(original)
    listener.run_finished(RunResult("w", "r", False, steps={"s": original}))
    assert inner.lines == ["password is ***"]
    assert inner.results[0].stdout == "***\n" and inner.results[0].error == "bad ***"
    assert inner.runs[0].steps["s"].stdout == "***\n"
    assert original.stdout == "hunter22\n"  # the engine's copy (for templates) is untouched
