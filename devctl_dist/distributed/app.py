"""The Celery app of devctl, built from :class:`~devctl_dist.settings.Settings`.

``celery -A devctl_dist.distributed.app:app worker`` and ``devctl worker`` both
use :func:`create_app`, so the coordinator and the workers agree on queues,
serialization, expiries and time limits.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery
from celery.signals import celeryd_init

from devctl_dist.settings import Settings, redact_url

log = logging.getLogger(__name__)

TASK_NAME = "devctl.run_step"
_SETTINGS_ATTR = "devctl_settings"


def create_app(settings: Settings | None = None) -> Celery:
    """Build a configured Celery app (coordinator side: it sends ``devctl.run_step`` by name).

    Workers build theirs with ``tasks.create_worker_app``, which registers the
    task; this module never imports ``tasks`` (no import cycle).
    """
    settings = settings or Settings()
    app = Celery("devctl", broker=settings.broker_url, backend=settings.result_backend_url)
    app.conf.update(celery_config(settings))
    setattr(app, _SETTINGS_ATTR, settings)
    return app


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery configuration: JSON only, late acks, prefetch 1, events on, bounded visibility."""
    transport = {"visibility_timeout": settings.visibility_timeout}
    return {
        "task_serializer": "json",
        "result_serializer": "json",
        "event_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "result_expires": settings.result_expires,
        "task_time_limit": settings.hard_time_limit,
        "task_default_queue": settings.default_queue,
        "task_routes": {TASK_NAME: {"queue": settings.default_queue}},
        "broker_transport_options": dict(transport),
        "result_backend_transport_options": dict(transport),
        "broker_connection_retry_on_startup": True,
        "broker_connection_retry": True,
        "broker_connection_max_retries": None,  # a worker outlives a broker outage of any length
        "worker_cancel_long_running_tasks_on_connection_loss": False,  # steps go on through a blip
        "worker_hijack_root_logger": True,
        "enable_utc": True,
    }


def settings_of(app: Celery) -> Settings:
    """The settings ``app`` was built from (plain ``Settings()`` for a foreign app)."""
    found = getattr(app, _SETTINGS_ATTR, None)
    return found if isinstance(found, Settings) else Settings()


def rate_limit_for_queues(settings: Settings, queues: list[str]) -> str | None:
    """The Celery rate limit a worker serving ``queues`` applies to every step it runs.

    Celery rate limits are per worker and per task type, not per queue: a worker
    serving a rate-limited queue throttles all its steps. Serve a rate-limited
    queue with dedicated workers. Several limited queues: the strictest wins.
    """
    limits = [settings.queue_rate_limits[q] for q in queues if q in settings.queue_rate_limits]
    if not limits:
        return None
    return min(limits, key=_per_second)


def _per_second(limit: str) -> float:
    """'10/s' -> 10, '30/m' -> 0.5, '100/h' -> 0.0277; a bare number is per second."""
    count, _, unit = limit.partition("/")
    per = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0}.get(unit.strip() or "", 1.0)
    return float(count) / per


def _queues_option(value: object) -> list[str]:
    if isinstance(value, str):
        return [q for q in value.split(",") if q]
    if isinstance(value, list | tuple | set):
        return [str(q) for q in value]
    return []


def _apply_queue_rate_limits(
    sender: str, instance: Any, conf: Any, options: dict[str, Any], **_: Any
) -> None:
    """At worker start, turn ``queue_rate_limits`` for the served queues into a task annotation."""
    app = instance.app
    settings = settings_of(app)
    queues = _queues_option(options.get("queues")) or [settings.default_queue]
    limit = rate_limit_for_queues(settings, queues)
    if limit is None:
        return
    app.conf.task_annotations = {TASK_NAME: {"rate_limit": limit}}
    app.tasks[TASK_NAME].rate_limit = limit
    log.info("worker %s serving %s: %s rate_limit %s (per worker)", sender, queues, TASK_NAME, limit)


celeryd_init.connect(_apply_queue_rate_limits, weak=False)


def describe(app: Celery) -> str:
    """One line naming the (redacted) broker, for logs and errors."""
    return redact_url(str(app.conf.broker_url))


def __getattr__(name: str) -> Any:
    """``app``, the app for ``celery -A devctl_dist.distributed.app:app``, built on first use.

    Lazy, so importing this package never fails on a bad ``DEVCTL_*`` variable: the
    error surfaces where settings are loaded on purpose, as one line.
    """
    if name == "app":
        built = create_app()
        globals()["app"] = built
        return built
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
