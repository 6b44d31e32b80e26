"""Results of steps, blocks and runs (the seed's module path).

The dataclasses live in ``devctl_dist.core.results`` so that ``core`` (events,
output) never imports ``workflows``; this module re-exports them.
"""

from devctl_dist.core.results import ParallelBlockResult, RunResult, StepResult, StepStatus

__all__ = ["ParallelBlockResult", "RunResult", "StepResult", "StepStatus"]
