"""The distributed baseline: a plain Celery app, a plain task, Celery's defaults.

Worker: ``celery -A plain_celery worker -c 2 -Q QUEUE`` (run from bench/).
Client: ``python bench/plain_celery.py N QUEUE`` sends a ``group`` of N tasks, each
running ``true`` with ``subprocess.run(cmd, shell=True)``, and waits for all of
them; bench_e2e.py times this process end to end, like ``devctl``.
Broker and result backend: ``PLAIN_CELERY_URL`` (default redis://127.0.0.1:6379/6).
With ``PLAIN_CELERY_LIKE_DEVCTL=1`` (client and worker) the app takes the settings devctl must run
with (task events, late ack, prefetch 1): the floor row of the table.
"""

from __future__ import annotations

import os
import subprocess
import sys

from celery import Celery, group

URL = os.environ.get("PLAIN_CELERY_URL", "redis://127.0.0.1:6379/6")
app = Celery("plain", broker=URL, backend=URL)
if os.environ.get("PLAIN_CELERY_LIKE_DEVCTL") == "1":
    # The floor row: still a plain app and task, but with the settings DESIGN.md requires of
    # devctl's workers (events for Flower, late ack, one message per process at a time).
    app.conf.update(
        worker_send_task_events=True,
        task_send_sent_event=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
    )


@app.task(name="plain.run")  # type: ignore[untyped-decorator]
def run(cmd: str) -> int:
    """Run one command through the shell: what a hand-written Celery task would do."""
    return subprocess.run(cmd, shell=True, check=False).returncode


def main() -> int:
    count, queue = int(sys.argv[1]), sys.argv[2]
    codes = group(run.s("true") for _ in range(count)).apply_async(queue=queue).get(timeout=900)
    return 0 if all(code == 0 for code in codes) else 1


if __name__ == "__main__":
    sys.exit(main())
