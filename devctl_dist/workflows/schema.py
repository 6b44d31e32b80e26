"""The workflow file format (pydantic v2).

Names and defaults follow the seed specification; the remaining fields are the
ones workflows written for the original sequential devctl use. Every model
forbids unknown keys so a typo is an error, not a silently ignored setting.
"""

from __future__ import annotations

import datetime
import math
import unicodedata
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    field_validator,
    model_validator,
)

BlockFailureMode = Literal["fail_all", "continue", "complete_running"]
StepFailureMode = Literal["fail", "continue", "skip"]

# Bounds on numbers a hostile or mistyped file could blow up (retry backoff
# overflowed past attempt 1024; an infinite timeout cannot be sent to a worker).
MAX_RETRIES = 100
MAX_RETRY_DELAY = 3600.0
MAX_TIMEOUT = 7 * 24 * 3600.0
MAX_RATE_LIMIT = 1_000_000.0
MAX_CONCURRENT = 100_000


def _printable_name(value: str | None) -> str | None:
    """Names appear in tables, logs and task ids: no control characters (terminal escapes)."""
    if value is None or value.isprintable():  # printable: no C* character at all (the common case, fast)
        return value
    if any(unicodedata.category(char) in ("Cc", "Cs") for char in value):
        raise ValueError(f"{value!r} contains a control character")
    return value


def _not_bool(value: Any) -> Any:
    """YAML reads ``true``/``yes`` as a boolean and pydantic would count it as 1: a number is never a yes."""
    if isinstance(value, bool):
        raise ValueError(f"expected a number, not {str(value).lower()}")
    return value


Name = Annotated[str, AfterValidator(_printable_name)]
Seconds = Annotated[float, Field(gt=0, le=MAX_TIMEOUT, allow_inf_nan=False)]
# An environment (values stringified, names checked) and a mapping JSON can carry to a worker.
EnvMap = Annotated[
    dict[str, str], BeforeValidator(lambda v: _stringify_env(v)), AfterValidator(lambda v: check_env(v))
]
JsonMap = Annotated[dict[str, Any], AfterValidator(lambda v: json_value(v))]


def _no_items() -> dict[str, Any]:
    """An empty mapping: ``dict`` itself as a factory makes pydantic parse its text signature
    (``inspect`` then compiles tokenize's regexes: ~5 ms of every start-up)."""
    return {}


def _no_entries() -> list[Any]:
    """An empty list (see ``_no_items``)."""
    return []


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ParallelConfigSchema(StrictModel):
    """Run-wide limits: they hold across every block and the whole DAG."""

    max_concurrent: int = Field(default=10, ge=1, le=MAX_CONCURRENT)
    rate_limit: float | None = Field(default=None, gt=0, le=MAX_RATE_LIMIT, allow_inf_nan=False)
    fail_fast: bool = True

    _numbers = field_validator("max_concurrent", "rate_limit", mode="before")(_not_bool)


class ParallelBlockSchema(StrictModel):
    """Steps that run concurrently as one step of the outer sequence."""

    name: Name | None = None
    steps: list[WorkflowStepSchema] = Field(min_length=1)
    on_failure: BlockFailureMode = "fail_all"
    timeout: Seconds | None = None
    max_concurrent: int | None = Field(default=None, ge=1, le=MAX_CONCURRENT)

    _numbers = field_validator("timeout", "max_concurrent", mode="before")(_not_bool)


class WorkflowStepSchema(StrictModel):
    """One step: a command (``!shell`` or a devctl command) or a parallel block."""

    name: Name | None = None
    description: str | None = None
    command: str | None = None
    params: JsonMap = Field(default_factory=_no_items)
    condition: str | None = None
    timeout: Seconds | None = None
    retries: int = Field(default=0, ge=0, le=MAX_RETRIES)
    retry_delay: float = Field(default=1.0, ge=0, le=MAX_RETRY_DELAY, allow_inf_nan=False)
    on_failure: StepFailureMode = "fail"
    env: EnvMap = Field(default_factory=_no_items)
    queue: Name | None = None
    parallel: ParallelBlockSchema | None = None
    depends_on: list[Name] = Field(default_factory=_no_entries)
    secrets: list[str] = Field(default_factory=_no_entries)  # env/params names whose values are masked

    @model_validator(mode="before")
    @classmethod
    def _marked_secrets(cls, data: Any) -> Any:
        return unwrap_secrets(data, ("env", "params"))

    _numbers = field_validator("timeout", "retries", "retry_delay", mode="before")(_not_bool)

    @field_validator("depends_on", mode="before")
    @classmethod
    def _single_dependency(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("condition", mode="before")
    @classmethod
    def _bool_condition(cls, value: Any) -> Any:
        """``condition: false`` in YAML is a bool; keep it meaning what it says."""
        return str(value).lower() if isinstance(value, bool) else value

    @model_validator(mode="after")
    def _command_xor_parallel(self) -> WorkflowStepSchema:
        if self.command is None and self.parallel is None:
            raise ValueError("a step must have either 'command' or 'parallel'")
        if self.command is not None and self.parallel is not None:
            raise ValueError("a step cannot have both 'command' and 'parallel'")
        if self.command is not None and not self.name:
            raise ValueError("a command step needs a 'name'")
        if self.command is not None and not self.command.strip():
            raise ValueError("'command' is empty")
        if self.command is not None and self.command.strip() == "!":  # would run `sh -c ''`: a silent success
            raise ValueError("'command' is empty (nothing after '!')")
        return self

    @property
    def display_name(self) -> str:
        """The step's name; a block wrapper takes its block's name."""
        if self.name:
            return self.name
        if self.parallel is not None and self.parallel.name:
            return self.parallel.name
        return "parallel block"

    @property
    def is_block(self) -> bool:
        return self.parallel is not None


class WorkflowSchema(StrictModel):
    """A whole workflow file."""

    name: str = "workflow"
    description: str | None = None
    version: str | None = None
    vars: JsonMap = Field(default_factory=_no_items)
    env: EnvMap = Field(default_factory=_no_items)
    parallel: ParallelConfigSchema = Field(default_factory=ParallelConfigSchema)
    steps: list[WorkflowStepSchema] = Field(min_length=1)
    on_success: list[WorkflowStepSchema] = Field(default_factory=_no_entries)
    on_failure: list[WorkflowStepSchema] = Field(default_factory=_no_entries)
    secrets: list[str] = Field(default_factory=_no_entries)  # vars/env names whose values are masked
    _checked: Any = PrivateAttr(default=None)  # validation.check() caches its verdict here

    @model_validator(mode="before")
    @classmethod
    def _marked_secrets(cls, data: Any) -> Any:
        return unwrap_secrets(data, ("vars", "env"))

    @field_validator("version", mode="before")
    @classmethod
    def _version_to_str(cls, value: Any) -> Any:
        return None if value is None else str(value)

    @property
    def is_dag(self) -> bool:
        """Any top-level ``depends_on`` switches the run to dependency-graph mode."""
        return any(step.depends_on for step in self.steps)

    @property
    def is_sequential(self) -> bool:
        """No parallel block and no dependencies: the original engine's behaviour."""
        return not self.is_dag and not any(step.is_block for step in self.steps)


def unwrap_secrets(data: Any, sections: tuple[str, ...]) -> Any:
    """``NAME: {value: V, secret: true}`` in a section becomes ``NAME: V``, with NAME added to ``secrets``."""
    if not isinstance(data, dict):
        return data
    marked: list[str] = []
    changed: dict[str, Any] = {}  # copied only when a value is marked: this runs for every step
    for section in sections:
        entries = data.get(section)
        if not isinstance(entries, dict) or not any(isinstance(value, dict) for value in entries.values()):
            continue
        unwrapped = dict(entries)
        for key, value in entries.items():
            if isinstance(value, dict) and set(value) == {"value", "secret"} and value["secret"] is True:
                unwrapped[key] = value["value"]
                marked.append(key)
        changed[section] = unwrapped
    if not marked:
        return data
    existing = data.get("secrets")
    return {**data, **changed, "secrets": [*(existing if isinstance(existing, list) else []), *marked]}


def _stringify_env(value: Any) -> Any:
    """YAML turns ``PORT: 8080`` into an int; environment values are strings."""
    if isinstance(value, dict):
        return {
            k: ("" if v is None else str(v).lower() if isinstance(v, bool) else str(v))
            for k, v in value.items()
        }
    return value


def check_env(env: dict[str, str]) -> dict[str, str]:
    """Keys a process environment can carry: not empty, no ``=``, no NUL or control character."""
    for key, value in env.items():
        if not key or "=" in key or any(unicodedata.category(char) == "Cc" for char in key):
            raise ValueError(f"invalid environment variable name {key!r}: no '=', no control characters")
        if "\0" in value:
            raise ValueError(f"environment variable {key!r}: a NUL character is not allowed")
    return env


def json_value(value: Any, where: str = "") -> Any:
    """``value`` if JSON can carry it (dates become ISO text), else a ``ValueError`` naming the path.

    Steps travel to workers as JSON: a YAML set, binary or non-string key would fail there.
    """
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{value} is not allowed{_at(where)} (JSON numbers are finite)")
        return value
    if isinstance(value, datetime.date):
        return str(value)  # what the shell argument would have been
    if isinstance(value, list):
        return [json_value(item, f"{where}[{index}]") for index, item in enumerate(value)]
    if isinstance(value, dict):
        for key in value:
            if not isinstance(key, str):
                raise ValueError(f"keys must be strings{_at(where)} (got {key!r})")
        return {key: json_value(item, f"{where}.{key}" if where else key) for key, item in value.items()}
    kind = "a set" if isinstance(value, set | frozenset) else f"a {type(value).__name__} value"
    kind = "binary data" if isinstance(value, bytes) else kind
    raise ValueError(f"{kind} is not allowed{_at(where)} (use strings, numbers, booleans, lists, mappings)")


def _at(where: str) -> str:
    return f" at '{where}'" if where else ""


ParallelBlockSchema.model_rebuild()
WorkflowStepSchema.model_rebuild()
