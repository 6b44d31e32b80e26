"""TemplateRenderer: strict, sandboxed rendering and condition judging, errors naming the step."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from devctl_dist.core.exceptions import TemplateError
from devctl_dist.workflows.results import StepResult, StepStatus
from devctl_dist.workflows.templating import TemplateRenderer

ENV = {"HOME": "/home/ops", "REGION": "eu-west-1"}


def make_renderer(**variables: object) -> TemplateRenderer:
    return TemplateRenderer({"app": "api", "replicas": 3, "tags": ["a", "b"], **variables}, ENV)


def result(name: str, stdout: str = "", **fields: object) -> StepResult:
    data: dict[str, object] = {"success": True, "status": StepStatus.SUCCEEDED, "exit_code": 0, **fields}
    return StepResult(name=name, stdout=stdout, **data)  # type: ignore[arg-type]


BUILD = {"build": result("build", "v1.2.3\n\n", stderr="warn\n", duration=1.5)}


def render_error(template: str, renderer: TemplateRenderer | None = None, **kwargs: object) -> str:
    with pytest.raises(TemplateError) as caught:
        (renderer or make_renderer()).render(template, step="deploy", **kwargs)  # type: ignore[arg-type]
    message = str(caught.value)
    assert "\n" not in message
    assert caught.value.step == "deploy"
    return message


def test_variables_vars_and_env() -> None:
    renderer = make_renderer()
    text = (
        "{{ app }} {{ vars.app }} x{{ replicas }} {{ tags | join(',') }} {{ env.HOME }} {{ env['REGION'] }}"
    )
    assert renderer.render(text, step="s") == "api api x3 a,b /home/ops eu-west-1"


def test_text_without_braces_is_returned_unchanged() -> None:
    command = "!awk '$1 > 3' data | sort -u && echo ok || echo fail >&2"
    assert make_renderer().render(command, step="s") is command


def test_multiline_and_trailing_newline_kept() -> None:
    assert make_renderer().render("echo {{ app }}\necho done\n", step="s") == "echo api\necho done\n"


def test_a_variable_named_env_wins_but_still_reads_the_environment() -> None:
    renderer = make_renderer(env="prod")
    assert (
        renderer.render("{{ env }}-{{ env.HOME }}-{{ env['REGION'] }}", step="s")
        == "prod-/home/ops-eu-west-1"
    )
    assert renderer.judge("env == 'prod'", step="s") is True


def test_results_expose_output_fields() -> None:
    renderer = make_renderer()
    template = "[{{ results['build'].stdout }}][{{ results.build.stderr }}] {{ results['build'].exit_code }} "
    template += "{{ results['build'].status }} {{ results['build'].success }} {{ results['build'] }}"
    assert renderer.render(template, step="deploy", results=BUILD) == "[v1.2.3][warn] 0 succeeded True v1.2.3"


def test_failed_allowed_status_and_exit_code() -> None:
    failed = {"probe": result("probe", "", success=False, status=StepStatus.FAILED_ALLOWED, exit_code=3)}
    text = "{{ results['probe'].status }}/{{ results['probe'].exit_code }}/{{ results['probe'].success }}"
    assert make_renderer().render(text, step="s", results=failed) == "failed (allowed)/3/False"


def test_step_output_is_not_rendered_again() -> None:
    injected = {"build": result("build", "{{ 7 * 7 }} {% raw %}")}
    assert (
        make_renderer().render("{{ results.build.stdout }}", step="s", results=injected)
        == "{{ 7 * 7 }} {% raw %}"
    )


def test_undefined_variable_is_an_error_naming_it() -> None:
    assert render_error("deploy to {{ region }}") == "step 'deploy': undefined variable 'region'"
    assert render_error("{{ vars.region }}") == "step 'deploy': undefined variable 'region'"
    assert (
        render_error("{{ env.MISSING_VAR }}") == "step 'deploy': undefined environment variable 'MISSING_VAR'"
    )
    assert render_error("{{ region | quote }}") == "step 'deploy': undefined variable 'region'"


def test_results_outside_dependencies_are_refused() -> None:
    message = render_error("{{ results['build'].stdout }}", results=BUILD, allowed={"lint"})
    assert message == "step 'deploy': results['build'] is not available (not a dependency of 'deploy')"
    message = render_error("{{ results.build.stdout }}", results=BUILD, allowed=set())
    assert message == "step 'deploy': results['build'] is not available (not a dependency of 'deploy')"


def test_results_of_steps_that_have_not_run_are_refused() -> None:
    message = render_error("{{ results['test'].stdout }}", results=BUILD, allowed={"build", "test"})
    assert message == "step 'deploy': results['test'] is not available (step 'test' has no result yet)"
    message = render_error("{{ results['test'].stdout }}", results=BUILD)
    assert message == "step 'deploy': results['test'] is not available (step 'test' has no result yet)"


def test_results_membership_and_get() -> None:
    renderer = make_renderer()
    text = "{{ 'build' in results }} {{ 'test' in results }} {{ results.get('test', 'none yet') }}"
    assert renderer.render(text, step="s", results=BUILD) == "True False none yet"
    assert renderer.render("{{ 'build' in results }}", step="s", results=BUILD, allowed={"x"}) == "False"


def test_syntax_error_names_the_step() -> None:
    message = render_error("{% if app %}deploy")
    assert message.startswith("step 'deploy': template syntax error: ")
    assert "endif" in message
    assert render_error("{{ app }") == "step 'deploy': template syntax error: unexpected '}'"


def test_runtime_errors_become_template_errors() -> None:
    assert (
        render_error("{{ 1 / 0 }}") == "step 'deploy': template failed: ZeroDivisionError: division by zero"
    )
    assert render_error("{{ results.build.nope }}", results=BUILD) == (
        "step 'deploy': StepOutput has no attribute or key 'nope'"
    )


def test_quote_filter_makes_one_shell_word(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    hostile = f'it\'s a "test"; touch {marker} $(touch {marker}) `touch {marker}`'
    renderer = make_renderer(message=hostile, port=8080)
    command = renderer.render("printf '%s|' {{ message | quote }} {{ port | quote }}", step="s")
    done = subprocess.run(["/bin/sh", "-c", command], capture_output=True, text=True, timeout=30, check=True)
    assert done.stdout == f"{hostile}|8080|"
    assert not marker.exists()


@pytest.mark.parametrize(
    "template",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ cycler.__init__.__globals__.os.system('touch PWNED') }}",
        "{{ lipsum.__globals__['os'].system('touch PWNED') }}",
        "{{ joiner.__init__.__globals__ }}",
        "{{ ''.format.__globals__ }}",
        "{{ {}.__class__.__base__.__subclasses__() }}",
        "{{ results.__class__ }}",
        "{{ env.__class__.__init__ }}",
    ],
)
def test_sandbox_refuses_python_internals(
    template: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    message = render_error(template, results=BUILD)
    assert message.startswith("step 'deploy': unsafe template: access to attribute '__")
    assert not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{{ 'x' * 100000000 }}", "step 'deploy': unsafe template: the result of '*' would be too large"),
        ("{{ [1] * 100000000 }}", "step 'deploy': unsafe template: the result of '*' would be too large"),
        ("{{ 10 ** 10000000 }}", "step 'deploy': unsafe template: the result of '**' would be too large"),
    ],
)
def test_sandbox_caps_huge_results(template: str, message: str) -> None:
    assert render_error(template) == message


def test_small_arithmetic_still_works() -> None:
    assert (
        make_renderer().render("{{ 'ab' * 3 }} {{ 2 ** 10 }} {{ replicas * 2 }}", step="s") == "ababab 1024 6"
    )


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        ("{{ replicas > 2 }}", True),
        ("{{ replicas > 5 }}", False),
        ("{{ 'yes' }}", True),
        ("{{ 'On' }}", True),
        ("{{ 1 }}", True),
        ("{{ 'no' }}", False),
        ("{{ 'off' }}", False),
        ("{{ 0 }}", False),
        ("{{ none }}", False),
        ("{{ '' }}", False),
        ("{% if app == 'api' %}true{% else %}false{% endif %}", True),
        ("replicas > 2", True),
        ("app == 'web'", False),
        ("tags", True),
        ("'a' in tags and env.REGION.startswith('eu')", True),
        ("results['build'].success and results['build'].stdout == 'v1.2.3'", True),
        ("results.build.exit_code != 0", False),
        ("true", True),
        ("False", False),
        ("yes", True),
        ("off", False),
        ("", False),
    ],
)
def test_judge(condition: str, expected: bool) -> None:
    assert make_renderer().judge(condition, step="s", results=BUILD) is expected


@pytest.mark.parametrize(
    ("condition", "message"),
    [
        ("{{ app }}", "step 'gate': condition '{{ app }}' rendered 'api', expected true or false"),
        ("ready and replicas", "step 'gate': undefined variable 'ready'"),
        ("{{ ready }}", "step 'gate': undefined variable 'ready'"),
        ("replicas >", "step 'gate': template syntax error: unexpected 'end of template'"),
        (
            "results['build'].success",
            "step 'gate': results['build'] is not available (not a dependency of 'gate')",
        ),
        (
            "''.__class__",
            "step 'gate': unsafe template: access to attribute '__class__' of 'str' object is unsafe.",
        ),
    ],
)
def test_judge_errors(condition: str, message: str) -> None:
    with pytest.raises(TemplateError) as caught:
        make_renderer().judge(condition, step="gate", results=BUILD, allowed={"lint"})
    assert str(caught.value) == message


def test_judge_never_evaluates_python(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    condition = f"__import__('os').system('touch {marker}')"
    with pytest.raises(TemplateError):
        make_renderer().judge(condition, step="s")
    assert not marker.exists()


DOUBLE_40_TIMES = "{{% for i in range(40) %}}{{% set ns.v = {} %}}{{% endfor %}}{{{{ ns.v > 0 }}}}"
HUGE = [
    "{{ 'x'|center(2000000000) }}",
    "{{ 'x'.center(2000000000) }}",
    "{{ 'x'.ljust(2000000000) }}",
    "{{ 'x'.zfill(2000000000) }}",
    "{{ ('x' * 5000000)|replace('x', 'xxxxx') }}",
    "{{ ('x' * 5000000).replace('x', 'xxxxx') }}",
    "{{ ('x' * 1000)|replace('', 'y' * 100000) }}",
    "{{ '%2000000000s'|format('x') }}",
    "{{ '%*s'|format(2000000000, 'x') }}",
    "{{ '%2000000000s' % 'x' }}",
    "{{ '{:>2000000000}'.format('x') }}",
    "{{ '{:>{}}'.format('x', 2000000000) }}",
    "{{ 'x' * 2000000000 }}",
    "{{ [1] * 2000000000 }}",
    "{{ ('\t' * 1000000).expandtabs(1000) }}",
    "{{ ('x\n' * 1000000)|indent(1000) }}",
    "{{ range(100000)|join('y' * 1000) }}",
    "{{ ('y' * 1000).join(range(100000)) }}",
    "{{ [1]|batch(2000000000, 0)|list }}",
    "{{ ('x ' * 4000000)|wordwrap(1, wrapstring='-' * 10) }}",
    "{% set ns = namespace(v='x') %}" + DOUBLE_40_TIMES.format("ns.v ~ ns.v"),
    "{% set ns = namespace(v='x') %}" + DOUBLE_40_TIMES.format("ns.v + ns.v"),
    "{% set ns = namespace(v=3) %}" + DOUBLE_40_TIMES.format("ns.v * ns.v"),
    "{% for i in range(100000) %}{% for j in range(1000) %}xxxxxxxxxx{% endfor %}{% endfor %}",
    "{{ 2 ** 1000000 }}",
]


@pytest.mark.parametrize("template", HUGE)
def test_every_way_to_grow_output_is_bounded(template: str) -> None:
    began = time.monotonic()
    message = render_error(template)
    assert "would be too large" in message or "loops ran more than" in message, message
    assert time.monotonic() - began < 5


def test_moderate_output_still_renders() -> None:
    text = make_renderer().render(
        "{{ 'x'|center(1000) }}{{ '%5s' % 'y' }}{{ 'a,b'.replace(',', ';') }}", step="s"
    )
    assert len(text) == 1000 + 5 + 3 and text.endswith("    ya;b")


def test_templates_cannot_mutate_values() -> None:
    assert "unsafe template" in render_error("{{ tags.append('c') }}")


def test_nested_loops_are_stopped_by_an_iteration_budget() -> None:
    """10^10 empty iterations would pin the event loop (and ignore Ctrl-C) for minutes: refused fast."""
    import time

    renderer = TemplateRenderer({}, {})
    started = time.monotonic()
    with pytest.raises(TemplateError, match=r"loops ran more than 1,000,000 iterations"):
        nested = "{% for x in range(99999) %}{% for y in range(99999) %}{% endfor %}{% endfor %}"
        renderer.render(nested, step="s")
    assert time.monotonic() - started < 10
    # the budget is per render, and ordinary loops keep working (loop.length, else)
    listed = "{% for x in [1, 2] %}{{ x }}/{{ loop.length }} {% endfor %}"
    assert renderer.render(listed, step="s") == "1/2 2/2 "
    assert renderer.render("{% for x in [] %}{{ x }}{% else %}none{% endfor %}", step="s") == "none"
