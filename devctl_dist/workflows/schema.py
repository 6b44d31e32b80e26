"""The workflow file format (pydantic v2).

Names and defaults follow the seed specification; the remaining fields are the
ones workflows written for the original sequential devctl use. Every model
forbids unknown keys so a typo is an error, not a silently ignored setting.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

BlockFailureMode = Literal["fail_all", "continue", "complete_running"]
StepFailureMode = Literal["fail", "continue", "skip"]


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ParallelConfigSchema(StrictModel):
    """Run-wide limits: they hold across every block and the whole DAG."""

    max_concurrent: int = Field(default=10, ge=1)
    rate_limit: float | None = Field(default=None, gt=0)
    fail_fast: bool = True


class ParallelBlockSchema(StrictModel):
    """Steps that run concurrently as one step of the outer sequence."""

    name: str | None = None
    steps: list[WorkflowStepSchema] = Field(min_length=1)
    on_failure: BlockFailureMode = "fail_all"
    timeout: float | None = Field(default=None, gt=0)
    max_concurrent: int | None = Field(default=None, ge=1)


class WorkflowStepSchema(StrictModel):
    """One step: a command (``!shell`` or a devctl command) or a parallel block."""

    name: str | None = None
    description: str | None = None
    command: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    condition: str | None = None
    timeout: float | None = Field(default=None, gt=0)
    retries: int = Field(default=0, ge=0)
    retry_delay: float = Field(default=1.0, ge=0)
    on_failure: StepFailureMode = "fail"
    env: dict[str, str] = Field(default_factory=dict)
    queue: str | None = None
    parallel: ParallelBlockSchema | None = None
    depends_on: list[str] = Field(default_factory=list)

    @field_validator("depends_on", mode="before")
    @classmethod
    def _single_dependency(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("env", mode="before")
    @classmethod
    def _env_to_str(cls, value: Any) -> Any:
        return _stringify_env(value)

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
    vars: dict[str, Any] = Field(default_factory=dict)
    env: dict[str, str] = Field(default_factory=dict)
    parallel: ParallelConfigSchema = Field(default_factory=ParallelConfigSchema)
    steps: list[WorkflowStepSchema] = Field(min_length=1)
    on_success: list[WorkflowStepSchema] = Field(default_factory=list)
    on_failure: list[WorkflowStepSchema] = Field(default_factory=list)

    @field_validator("version", mode="before")
    @classmethod
    def _version_to_str(cls, value: Any) -> Any:
        return None if value is None else str(value)

    @field_validator("env", mode="before")
    @classmethod
    def _env_to_str(cls, value: Any) -> Any:
        return _stringify_env(value)

    @property
    def is_dag(self) -> bool:
        """Any top-level ``depends_on`` switches the run to dependency-graph mode."""
        return any(step.depends_on for step in self.steps)

    @property
    def is_sequential(self) -> bool:
        """No parallel block and no dependencies: the original engine's behaviour."""
        return not self.is_dag and not any(step.is_block for step in self.steps)


def _stringify_env(value: Any) -> Any:
    """YAML turns ``PORT: 8080`` into an int; environment values are strings."""
    if isinstance(value, dict):
        return {
            k: ("" if v is None else str(v).lower() if isinstance(v, bool) else str(v))
            for k, v in value.items()
        }
    return value


ParallelBlockSchema.model_rebuild()
WorkflowStepSchema.model_rebuild()
