"""One exception root for everything devctl raises on purpose.

The CLI maps each leaf to an exit code and prints ``str(error)`` as one line, so
every message must stand alone: name the file, line, step or URL it is about.
The exit codes are a contract with CI scripts (retry on 3, and only on 3), so
they live here, next to the errors that carry them.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1  # a step failed
EXIT_INVALID = 2  # invalid workflow or usage
EXIT_UNAVAILABLE = 3  # infrastructure unavailable: broker, workers
EXIT_SIGINT = 130  # 128 + SIGINT
EXIT_SIGTERM = 143  # 128 + SIGTERM


class DevctlError(Exception):
    """Root of every error devctl raises deliberately."""

    exit_code: int = 1


class WorkflowError(DevctlError):
    """The workflow file or its contents are invalid (exit code 2)."""

    exit_code = EXIT_INVALID


class WorkflowLoadError(WorkflowError):
    """The file cannot be read or parsed; carries where, when known."""

    def __init__(self, message: str, path: str | None = None, line: int | None = None) -> None:
        self.path = path
        self.line = line
        where = path or "<workflow>"
        if line is not None:
            where = f"{where}:{line}"
        super().__init__(f"{where}: {message}")


class WorkflowValidationError(WorkflowLoadError):
    """The YAML parsed but does not describe a valid workflow."""


class GraphError(WorkflowError):
    """The dependency graph is not a valid DAG."""


class DependencyCycleError(GraphError):
    """Steps depend on each other in a loop; ``cycle`` lists it, first node repeated last."""

    def __init__(self, cycle: list[str]) -> None:
        self.cycle = cycle
        super().__init__("circular dependency: " + " -> ".join(cycle))


class MissingDependencyError(GraphError):
    """A step names a dependency that no step has."""

    def __init__(self, step: str, missing: str, hint: str | None = None) -> None:
        self.step = step
        self.missing = missing
        message = f"step '{step}' depends on unknown step '{missing}'"
        super().__init__(f"{message} ({hint})" if hint else message)


class DuplicateStepError(GraphError):
    """Two steps share a name, so results and dependencies would be ambiguous."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"duplicate step name '{name}'")


class UsageError(DevctlError):
    """Bad command-line usage (exit code 2)."""

    exit_code = EXIT_INVALID


class TemplateError(DevctlError):
    """A template could not be rendered (undefined variable, syntax error, unsafe access)."""

    def __init__(self, message: str, step: str | None = None) -> None:
        self.step = step
        super().__init__(f"step '{step}': {message}" if step else message)


class CommandNotFoundError(DevctlError):
    """A devctl command (no ``!``) names no installed plugin."""

    def __init__(self, command: str) -> None:
        self.command = command
        super().__init__(
            f"unknown devctl command '{command}' (no plugin in entry-point group devctl.commands)"
        )


class ParallelExecutionError(DevctlError):
    """The scheduler hit an internal inconsistency; never a user input problem."""


class InfrastructureError(DevctlError):
    """Something devctl needs (not the workflow) is unavailable; retrying later may succeed (exit 3)."""

    exit_code = EXIT_UNAVAILABLE


class BrokerUnavailableError(InfrastructureError):
    """Distributed mode cannot reach its broker, finds no worker, or lost the broker mid-run (exit 3)."""


class RunInterrupted(DevctlError):
    """The run was interrupted (Ctrl-C / SIGTERM); exit code 130."""

    exit_code = EXIT_SIGINT
