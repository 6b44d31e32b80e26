"""``devctl worker`` and ``devctl flower``: a Celery worker and Flower for devctl's app.

The worker is always prefork (the only pool where terminate works), sends task
events (Flower), prefetches one task per process (a long step never holds a
queued one hostage) and does a warm shutdown on SIGTERM (Celery's default:
running steps finish, nothing new starts). Its hostname is unique per process,
``devctl-<pid>@<host>``, so several workers can share a machine.

``python -m devctl_dist.distributed.worker --queues a,b --concurrency 2`` works too.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from devctl_dist.core.exceptions import DevctlError, UsageError
from devctl_dist.settings import Settings, load_settings, redact_url

if TYPE_CHECKING:
    from celery import Celery


def worker_argv(
    settings: Settings,
    queues: Sequence[str] | None,
    concurrency: int | None,
    loglevel: str,
    hostname: str | None = None,
) -> list[str]:
    """The ``celery worker`` arguments devctl uses (pure, for tests and docs)."""
    served = [q for q in (queues or []) if q] or [settings.default_queue]
    argv = [
        "worker",
        "--pool=prefork",
        f"--queues={','.join(served)}",
        f"--hostname={hostname or f'devctl-{os.getpid()}@%h'}",
        f"--loglevel={loglevel.upper()}",
        "--task-events",
        "--prefetch-multiplier=1",
        "--without-gossip",
    ]
    if concurrency is not None:
        argv.append(f"--concurrency={concurrency}")
    return argv


def _settings_for(broker: str | None) -> Settings:
    return load_settings(broker_url=broker) if broker else load_settings()


def run_worker(
    queues: list[str] | None = None,
    concurrency: int | None = None,
    broker: str | None = None,
    loglevel: str = "info",
    hostname: str | None = None,
) -> int:
    """Run a worker in this process until it is shut down; returns its exit code."""
    from devctl_dist.distributed.tasks import create_worker_app

    settings = _settings_for(broker)
    app = create_worker_app(settings)
    argv = worker_argv(settings, queues, concurrency, loglevel, hostname)
    print(f"devctl worker on {redact_url(settings.broker_url)}: {' '.join(argv[1:])}", file=sys.stderr)
    return _run_celery(app, argv)


def flower_argv(port: int, basic_auth: str | None, address: str | None = None) -> list[str]:
    argv = ["flower", f"--port={port}"]
    if address is not None:
        argv.append(f"--address={address}")
    if basic_auth:
        argv.append(f"--basic-auth={basic_auth}")
    return argv


def run_flower(
    port: int = 5555, basic_auth: str | None = None, broker: str | None = None, address: str | None = None
) -> int:
    """Run Flower for devctl's app in this process.

    ``/metrics`` and ``/healthcheck`` skip basic auth: keep Flower on an internal
    network. Flower also reads ``FLOWER_BASIC_AUTH`` (keeps the password out of ``ps``).
    """
    from devctl_dist.distributed.tasks import create_worker_app

    settings = _settings_for(broker)
    app = create_worker_app(settings)
    print(f"devctl flower on http://localhost:{port} for {redact_url(settings.broker_url)}", file=sys.stderr)
    try:
        return _run_celery(app, flower_argv(port, basic_auth, address))
    except OSError as exc:  # Tornado's listen(): a busy or forbidden port is the user's to fix
        if exc.errno not in (errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL):
            raise
        raise UsageError(
            f"flower cannot listen on {address or '127.0.0.1'}:{port}: {exc.strerror}; choose another --port"
        ) from exc


def _run_celery(app: Celery, argv: list[str]) -> int:
    """Run a ``celery`` subcommand for ``app`` and return its exit code.

    ``app.worker_main`` and ``app.start`` drop the code Celery's command returns, so a
    worker that stopped on an "Unrecoverable error" exited 0 and looked like a clean stop.
    """
    import click
    from celery.bin.celery import celery as celery_command

    celery_command.params[0].default = app  # what ``app.start`` does: the --app option's default
    try:
        code = celery_command.main(args=argv, standalone_mode=False)
    except click.exceptions.Exit as exc:
        code = exc.exit_code
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        celery_command.params[0].default = None
    return code if isinstance(code, int) else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devctl_dist.distributed.worker", description=__doc__)
    parser.add_argument("--queues", default="", help="comma-separated queues (default: the default queue)")
    parser.add_argument("--concurrency", type=int, default=None)
    parser.add_argument("--broker", default=None, help="overrides DEVCTL_BROKER_URL")
    parser.add_argument("--loglevel", default="info")
    parser.add_argument("--hostname", default=None, help="default: devctl-<pid>@%%h")
    args = parser.parse_args(argv)
    queues = [q.strip() for q in args.queues.split(",") if q.strip()]
    try:
        return run_worker(queues or None, args.concurrency, args.broker, args.loglevel, args.hostname)
    except DevctlError as error:  # bad settings: one line, like ``devctl worker``
        print(f"devctl worker: error: {error}", file=sys.stderr)
        return error.exit_code


if __name__ == "__main__":
    sys.exit(main())
