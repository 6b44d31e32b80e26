"""The semantics suite runs against every runner with the same assertions."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from devctl_dist.runners.base import StepRunner
from devctl_dist.runners.local import LocalRunner

RUNNERS = ["local", "distributed"]


@pytest.fixture(params=RUNNERS)
def make_runner(request: pytest.FixtureRequest) -> Callable[[], StepRunner]:
    """A factory for a fresh runner of each kind (one per run)."""
    if request.param == "local":
        return lambda: LocalRunner(kill_grace=1.0)
    factory: Callable[[], StepRunner] = request.getfixturevalue("distributed_runner_factory")
    return factory
