"""`devctl worker` and `devctl flower`: the long-running services of distributed mode.

Thin Click wrappers over ``devctl_dist.distributed.worker``, imported lazily so
that `devctl run` on this machine never loads Celery.
"""

from __future__ import annotations

import click

from devctl_dist.core.exceptions import UsageError

BROKER_HELP = "Broker URL (default: DEVCTL_BROKER_URL or redis://localhost:6379/0)."
LOG_LEVELS = click.Choice(["debug", "info", "warning", "error", "critical"], case_sensitive=False)
HELP = {
    "queues": "Comma-separated queues to serve (default: the default queue).",
    "concurrency": "Worker processes (default: number of CPUs).",
    "basic-auth": "Require HTTP basic auth (comma-separate several users).",
}


EPILOG_WORKER = """\b
Examples:
  devctl worker                                  serve the default queue
  devctl worker --queues gpu,default --concurrency 4
  DEVCTL_BROKER_URL=redis://redis:6379/0 devctl worker
\b
A step with `queue: gpu` runs only on workers serving gpu. SIGTERM shuts down warmly.
"""


@click.command("worker", epilog=EPILOG_WORKER)
@click.option("--queues", "-Q", metavar="A,B", help=HELP["queues"])
@click.option("--concurrency", "-c", type=click.IntRange(min=1), metavar="N", help=HELP["concurrency"])
@click.option("--broker", metavar="URL", help=BROKER_HELP)
@click.option("--loglevel", "-l", type=LOG_LEVELS, default="info", show_default=True)
@click.option("--hostname", "-n", metavar="NAME", help="Celery node name (default: devctl-<pid>@<host>).")
def worker_command(
    queues: str | None, concurrency: int | None, broker: str | None, loglevel: str, hostname: str | None
) -> None:
    """Start a Celery worker that runs steps of `devctl run --distributed`."""
    queue_list = None
    if queues is not None:
        queue_list = [name.strip() for name in queues.split(",") if name.strip()]
        if not queue_list:
            raise UsageError("--queues: give at least one queue name, e.g. --queues default,gpu")
    from devctl_dist.distributed.worker import run_worker

    click.get_current_context().exit(run_worker(queue_list, concurrency, broker, loglevel.lower(), hostname))


EPILOG_FLOWER = """\b
Examples:
  devctl flower                                  http://localhost:5555
  devctl flower --port 8080 --basic-auth admin:s3cret --address 0.0.0.0
\b
Flower's /metrics and /healthcheck skip basic auth: keep Flower on an internal network.
"""


@click.command("flower", epilog=EPILOG_FLOWER)
@click.option("--port", type=click.IntRange(1, 65535), default=5555, show_default=True, help="HTTP port.")
@click.option("--basic-auth", metavar="USER:PASS", help=HELP["basic-auth"])
@click.option("--broker", metavar="URL", help=BROKER_HELP)
@click.option(
    "--address",
    metavar="HOST",
    default="127.0.0.1",
    show_default=True,
    help="Address to bind; 0.0.0.0 only inside a private network (containers).",
)
def flower_command(port: int, basic_auth: str | None, broker: str | None, address: str) -> None:
    """Start Flower, the web monitor, for devctl's Celery app."""
    if basic_auth is not None and not all(":" in pair for pair in basic_auth.split(",")):
        raise UsageError("--basic-auth: expected USER:PASS (or USER1:PASS1,USER2:PASS2)")
    from devctl_dist.distributed.worker import run_flower

    click.get_current_context().exit(run_flower(port, basic_auth, broker, address))
