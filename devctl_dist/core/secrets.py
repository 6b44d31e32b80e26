"""Secrets stay secret: which values are secret, and replacing them by ``***`` wherever we print or store.

A value is secret when its name (an ``env`` entry, a ``params`` key, a ``vars``
entry or a ``--var``) ends in ``_TOKEN``, ``_PASSWORD``, ``_SECRET`` or ``_KEY``,
or when the workflow marks it (``secrets: [NAME]`` or ``NAME: {value: ..., secret: true}``).
Masking is by value, so a step that echoes a secret is masked too. The engine
keeps the real values (templates and steps need them); every listener, the run
store and the worker's log and stream see masked copies.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from devctl_dist.core.events import EventBus, RunListener
from devctl_dist.core.reporting import OutputListener
from devctl_dist.core.results import ParallelBlockResult, RunResult, StepResult

MASK = "***"
SECRET_SUFFIXES = ("_TOKEN", "_PASSWORD", "_SECRET", "_KEY")
MIN_SECRET_LENGTH = 3  # masking "1" or "ok" everywhere would garble every line (GitHub does the same)


def is_secret_name(name: str, marked: Iterable[str] = ()) -> bool:
    """True for ``*_TOKEN``, ``*_PASSWORD``, ``*_SECRET``, ``*_KEY`` (any case) and marked names."""
    return name.upper().endswith(SECRET_SUFFIXES) or name in set(marked)


class Masker:
    """Replaces every known secret value in a text by ``***`` (longest values first)."""

    def __init__(self, values: Iterable[str] = ()) -> None:
        self._values: set[str] = set()
        self._pattern: re.Pattern[str] | None = None
        self.add(values)

    @property
    def values(self) -> list[str]:
        return sorted(self._values, key=len, reverse=True)

    def __bool__(self) -> bool:
        return bool(self._values)

    def add(self, values: Iterable[str]) -> None:
        """Learn more secret values; a multi-line value is also masked line by line (output is lines)."""
        fresh = set()
        for value in values:
            for part in (value, *value.splitlines()):
                part = part.strip("\r\n")
                if len(part) >= MIN_SECRET_LENGTH and part not in self._values:
                    fresh.add(part)
        if fresh:
            self._values |= fresh
            self._pattern = re.compile("|".join(re.escape(v) for v in self.values))

    def mask(self, text: str) -> str:
        if self._pattern is None or not text:
            return text
        return self._pattern.sub(MASK, text)

    def mask_optional(self, text: str | None) -> str | None:
        return None if text is None else self.mask(text)

    def mask_data(self, data: Any) -> Any:
        """Mask every string inside JSON-like data (dicts, lists)."""
        if isinstance(data, str):
            return self.mask(data)
        if isinstance(data, dict):
            return {key: self.mask_data(value) for key, value in data.items()}
        if isinstance(data, list | tuple):
            return [self.mask_data(value) for value in data]
        return data

    def step(self, result: StepResult) -> StepResult:
        """A masked copy of a step result (the original keeps the real output for templates)."""
        if self._pattern is None:
            return result
        return dataclasses.replace(
            result,
            stdout=self.mask_optional(result.stdout),
            stderr=self.mask_optional(result.stderr),
            error=self.mask_optional(result.error),
            skip_reason=self.mask_optional(result.skip_reason),
        )

    def block(self, result: ParallelBlockResult) -> ParallelBlockResult:
        if self._pattern is None:
            return result
        return dataclasses.replace(result, steps=[self.step(s) for s in result.steps])

    def run(self, result: RunResult) -> RunResult:
        if self._pattern is None:
            return result
        steps = {name: self.step(s) for name, s in result.steps.items()}
        return dataclasses.replace(result, steps=steps, blocks=[self.block(b) for b in result.blocks])


def named_secrets(mapping: Mapping[str, Any], marked: Iterable[str] = ()) -> list[str]:
    """The values of secret-named entries of ``mapping`` (as text; lists and mappings flattened)."""
    marked = set(marked)
    found: list[str] = []
    for key, value in mapping.items():
        if is_secret_name(key, marked):
            found.extend(_texts(value))
    return found


def _texts(value: Any) -> list[str]:
    if value is None or isinstance(value, bool):
        return []
    if isinstance(value, dict):
        return [text for item in value.values() for text in _texts(item)]
    if isinstance(value, list | tuple):
        return [text for item in value for text in _texts(item)]
    return [str(value)]


def workflow_secrets(
    workflow: Any, variables: Mapping[str, Any], render: Callable[[str], str] | None = None
) -> Masker:
    """Every secret value a run of ``workflow`` with ``variables`` (``--var``) can know before it starts.

    Templated values (``API_TOKEN: "{{ token }}"``) are rendered with ``render``
    when given; a template that needs a step's results cannot be rendered
    before the run and is masked only if its parts are secrets themselves.
    """
    marked = set(getattr(workflow, "secrets", []) or [])
    steps = list(_all_steps(workflow))
    for step in steps:
        marked |= set(getattr(step, "secrets", []) or [])
    merged = {**workflow.vars, **variables}
    raw = named_secrets(merged, marked) + named_secrets(workflow.env, marked)
    for step in steps:
        raw += named_secrets(step.env, marked) + named_secrets(step.params, marked)
    values = list(raw)
    if render is not None:
        for text in raw:
            if "{" in text:
                try:
                    values.append(render(text))
                except Exception:
                    continue
    return Masker(values)


def _all_steps(workflow: Any) -> Iterable[Any]:
    pending = [*workflow.steps, *workflow.on_success, *workflow.on_failure]
    while pending:
        step = pending.pop()
        if step.parallel is not None:
            pending.extend(step.parallel.steps)
        else:
            yield step


class MaskingListener(EventBus, OutputListener):
    """Sits in front of the real listeners and hands them masked lines and results.

    An ``EventBus`` (events that carry no text pass through unchanged) whose
    text-carrying events are masked first.
    """

    def __init__(self, masker: Masker, listeners: Iterable[RunListener]) -> None:
        super().__init__(listeners)
        self.masker = masker

    def step_output(self, name: str, stream: str, line: str) -> None:
        self._emit("step_output", name, stream, self.masker.mask(line))

    def step_retrying(self, name: str, attempt: int, delay: float, error: str | None) -> None:
        self._emit("step_retrying", name, attempt, delay, self.masker.mask_optional(error))

    def step_finished(self, result: StepResult) -> None:
        self._emit("step_finished", self.masker.step(result))

    def block_finished(self, result: ParallelBlockResult) -> None:
        self._emit("block_finished", self.masker.block(result))

    def run_finished(self, result: RunResult) -> None:
        self.finished = True
        self._emit("run_finished", self.masker.run(result))

    def close(self) -> None:
        for listener in self.listeners:
            if isinstance(listener, OutputListener):
                listener.close()
