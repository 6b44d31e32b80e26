"""The time bounds the coordinator and the workers must agree on, defined once.

A step's own ``timeout`` is enforced by the worker's LocalRunner; Celery's hard
time limit is only a backstop above it, and both sit below the broker's
``visibility_timeout`` so a long step is never re-delivered while it runs.
"""

from __future__ import annotations

from devctl_dist.settings import Settings

TIME_LIMIT_MARGIN = 60  # seconds between a step's own deadline (plus the kill grace) and Celery's hard limit


def task_time_limit(settings: Settings, timeout: float | None) -> int:
    """Celery's hard time limit for one attempt (coordinator side, sent with the task)."""
    limit = settings.hard_time_limit
    if timeout is not None:
        limit = min(limit, int(timeout + settings.kill_grace + TIME_LIMIT_MARGIN))
    return limit


def step_deadline_cap(hard_limit: float, settings: Settings) -> float:
    """The longest a worker lets a step run, so it is killed (and reported) before the hard limit hits."""
    return max(1.0, hard_limit - settings.kill_grace - 2.0)


def cancel_ttl(settings: Settings) -> int:
    """How long a cancel marker lives: longer than any message can stay unacknowledged."""
    return settings.visibility_timeout + 3600
