"""Render step templates and judge conditions with a sandboxed Jinja2.

Workflows are code the user trusts, but their templates also see step output,
so rendering is sandboxed, strict (an undefined name is an error, never an empty
string) and never uses ``eval``. Every failure is a one-line ``TemplateError``
naming the step.

Names in a template: each variable at top level and under ``vars``, ``env``
(the environment mapping given by the caller) and ``results['step']`` with
``.stdout``/``.stderr`` (trailing newlines stripped, like shell ``$(...)``),
``.exit_code``, ``.status``, ``.success``. A variable called ``env`` (as in
``--var env=prod``) wins at top level; when it is a string it still answers
``env.HOME`` / ``env['HOME']`` from the environment.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from jinja2 import StrictUndefined, Template
from jinja2 import exceptions as jinja_errors
from jinja2.exceptions import SecurityError
from jinja2.utils import missing

from devctl_dist.core.exceptions import TemplateError
from devctl_dist.workflows.sandbox import Sandbox, render_bounded

if TYPE_CHECKING:  # a type only: `devctl validate` need not import the results modules
    from devctl_dist.workflows.results import StepResult

_TRUE_WORDS = frozenset({"true", "yes", "on", "1"})
_FALSE_WORDS = frozenset({"false", "no", "off", "0", "none", ""})
_T = TypeVar("_T")


class _Environment(dict[str, str]):
    """The environment mapping (its type tells undefined-name messages what was looked up)."""


class _Variables(dict[str, Any]):
    """The ``vars`` mapping."""


class _EnvString(str):
    """A string variable named ``env`` that still looks environment variables up by key."""

    environment: Mapping[str, str]

    def __new__(cls, value: str, environment: Mapping[str, str]) -> _EnvString:
        obj = super().__new__(cls, value)
        obj.environment = environment
        return obj

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return self.environment[key]
        return str.__getitem__(self, key)


class _StrictUndefined(StrictUndefined):
    """StrictUndefined whose message names the variable the way a workflow author wrote it."""

    __slots__ = ()

    @property
    def _undefined_message(self) -> str:
        name, owner = self._undefined_name, self._undefined_obj
        if self._undefined_hint:
            return str(self._undefined_hint)
        if owner is missing or isinstance(owner, _Variables):
            return f"undefined variable '{name}'"
        if isinstance(owner, _Environment | _EnvString):
            return f"undefined environment variable '{name}'"
        return f"{type(owner).__name__} has no attribute or key '{name}'"


@dataclass(frozen=True)
class StepOutput:
    """What ``results['step']`` gives a template; prints as the step's stdout."""

    name: str
    stdout: str
    stderr: str
    exit_code: int | None
    status: str
    success: bool
    duration: float

    @classmethod
    def of(cls, result: StepResult) -> StepOutput:
        return cls(
            name=result.name,
            stdout=(result.stdout or "").rstrip("\n"),
            stderr=(result.stderr or "").rstrip("\n"),
            exit_code=result.exit_code,
            status=result.status.value,
            success=result.success,
            duration=result.duration,
        )

    def __str__(self) -> str:
        return self.stdout


class _Results(Mapping[str, StepOutput]):
    """``results`` for one step: only finished steps, and in DAG mode only its ancestors."""

    def __init__(self, step: str, results: Mapping[str, StepResult], allowed: Collection[str] | None) -> None:
        self._step, self._results, self._allowed = step, results, allowed

    def _check_allowed(self, name: str) -> None:
        if self._allowed is not None and name not in self._allowed:
            reason = f"not a dependency of '{self._step}'"
            raise TemplateError(f"results['{name}'] is not available ({reason})", self._step)

    def __getitem__(self, name: str) -> StepOutput:
        self._check_allowed(name)
        result = self._results.get(name)
        if result is None:
            reason = f"step '{name}' has no result yet"
            raise TemplateError(f"results['{name}'] is not available ({reason})", self._step)
        return StepOutput.of(result)

    def get(self, name: str, default: Any = None) -> Any:
        """Like dict.get for steps that have not run; still an error for non-dependencies."""
        self._check_allowed(name)
        result = self._results.get(name)
        return default if result is None else StepOutput.of(result)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._available()

    def __iter__(self) -> Iterator[str]:
        return iter(self._available())

    def __len__(self) -> int:
        return len(self._available())

    def _available(self) -> list[str]:
        allowed = self._allowed
        return [name for name in self._results if allowed is None or name in allowed]


class TemplateRenderer:
    """Renders every template of one run; compiled templates are cached by source."""

    def __init__(self, variables: Mapping[str, Any], env: Mapping[str, str]) -> None:
        self._sandbox = Sandbox(undefined=_StrictUndefined, autoescape=False, keep_trailing_newline=True)
        self._sandbox.filters["quote"] = _quote
        self._templates: dict[str, Template] = {}
        self._expressions: dict[str, Callable[..., Any]] = {}
        environment = _Environment(env)
        base: dict[str, Any] = dict(variables)
        user_env = base.get("env", environment)
        base["env"] = _EnvString(user_env, environment) if isinstance(user_env, str) else user_env
        base["vars"] = _Variables(variables)
        self._base = base

    def render(
        self,
        template: str,
        *,
        step: str,
        results: Mapping[str, StepResult] | None = None,
        allowed: Collection[str] | None = None,
    ) -> str:
        """Render ``template`` for ``step``; text without ``{`` is returned as is."""
        if "{" not in template:
            return template
        compiled = self._compile(template, step)
        context = self._context(step, results, allowed)
        self._sandbox.reset_budget()
        return _guarded(step, lambda: render_bounded(compiled.generate(context)))

    def judge(
        self,
        condition: str,
        *,
        step: str,
        results: Mapping[str, StepResult] | None = None,
        allowed: Collection[str] | None = None,
    ) -> bool:
        """Decide a ``condition``: a template rendering to true/false, or a bare Jinja expression."""
        if "{{" in condition or "{%" in condition:
            text = self.render(condition, step=step, results=results, allowed=allowed)
            return _truth_of_text(text, condition, step)
        word = condition.strip().lower()
        if word in _TRUE_WORDS or word in _FALSE_WORDS:
            return word in _TRUE_WORDS
        expression = self._compile_expression(condition, step)
        context = self._context(step, results, allowed)
        return _guarded(step, lambda: bool(expression(context)))

    def _context(
        self, step: str, results: Mapping[str, StepResult] | None, allowed: Collection[str] | None
    ) -> dict[str, Any]:
        context = dict(self._base)
        context["results"] = _Results(step, results or {}, allowed)
        return context

    def _compile(self, template: str, step: str) -> Template:
        compiled = self._templates.get(template)
        if compiled is None:
            compiled = _guarded(step, lambda: self._sandbox.from_string(template))
            self._templates[template] = compiled
        return compiled

    def _compile_expression(self, condition: str, step: str) -> Callable[..., Any]:
        compiled = self._expressions.get(condition)
        if compiled is None:
            source = condition.strip()
            compiled = _guarded(
                step, lambda: self._sandbox.compile_expression(source, undefined_to_none=False)
            )
            self._expressions[condition] = compiled
        return compiled


def _quote(value: Any) -> str:
    """The ``quote`` filter: make any value one safe shell word."""
    return shlex.quote(str(value))


def _truth_of_text(text: str, condition: str, step: str) -> bool:
    word = text.strip().lower()
    if word in _TRUE_WORDS:
        return True
    if word in _FALSE_WORDS:
        return False
    shown = text.strip() if len(text.strip()) <= 60 else text.strip()[:57] + "..."
    raise TemplateError(f"condition {condition!r} rendered {shown!r}, expected true or false", step)


def _guarded(step: str, action: Callable[[], _T]) -> _T:
    """Run a Jinja action; turn whatever it raises into a one-line TemplateError for ``step``."""
    try:
        return action()
    except TemplateError:
        raise
    except jinja_errors.TemplateSyntaxError as error:
        where = f" (line {error.lineno})" if error.source and "\n" in error.source.strip() else ""
        raise TemplateError(f"template syntax error: {_one_line(error.message or '')}{where}", step) from None
    except SecurityError as error:
        raise TemplateError(f"unsafe template: {_one_line(str(error))}", step) from None
    except jinja_errors.UndefinedError as error:
        raise TemplateError(_one_line(str(error)), step) from None
    except Exception as error:
        raise TemplateError(
            f"template failed: {type(error).__name__}: {_one_line(str(error))}", step
        ) from None


def _one_line(text: str) -> str:
    return " ".join(text.split())
