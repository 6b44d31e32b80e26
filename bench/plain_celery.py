"""The distributed baseline: a plain Celery app, a plain task, Celery's defaults.

Worker: ``celery -A plain_celery worker -c 2 -Q QUEUE`` (run from bench/).
Client: ``python bench/plain_celery.py N QUEUE`` sends a ``group`` of N tasks, each
running ``true`` with ``subprocess.run(cmd, shell=True)``, and waits for all of
them; bench_e2e.py times this process end to end, like ``devctl``.
Broker and result backend: ``PLAIN_CELERY_URL`` (default redis://127.0.0.1:6379/6).
"""

from __future__ import annotations

import os
import subprocess
import sys

from celery import Celery, group

URL = os.environ.get("PLAIN_CELERY_URL", "redis://127.0.0.1:6379/6")
app = Celery("plain", broker=URL, backend=URL)


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
