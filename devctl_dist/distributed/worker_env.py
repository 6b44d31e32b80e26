"""Keep the worker's own connection settings out of the steps it runs.

A step inherits the worker's environment. Left alone, every step could read the
broker URL with its password (``env`` in a step prints it into the results), and
with it run commands on every worker. At worker start, after the settings were
loaded, the worker removes from its own environment the ``DEVCTL_*`` connection
variables, the signing key, Celery's broker variables and any variable whose
value holds the broker or backend URL or its password; pool processes fork from
it afterwards, so no step ever sees them.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, MutableMapping
from urllib.parse import unquote

from devctl_dist.settings import Settings

CONNECTION_VARIABLES = frozenset(
    {
        "DEVCTL_BROKER_URL",
        "DEVCTL_RESULT_BACKEND",
        "DEVCTL_SIGNING_KEY",
        "DEVCTL_TEST_REDIS_URL",
        "CELERY_BROKER_URL",
        "CELERY_RESULT_BACKEND",
        "BROKER_URL",
    }
)
_MIN_SECRET = 4  # shorter "passwords" would match half the environment


def secrets_of(urls: Iterable[str]) -> set[str]:
    """The URLs themselves and the passwords they carry (what must not leak).

    Passwords are often not percent-encoded and may hold ``/`` or ``@``, so every
    ``user:password@`` reading of the authority counts (more is scrubbed, never less).
    """
    found: set[str] = set()
    for url in urls:
        if not url:
            continue
        found.add(url)
        rest = url.partition("://")[2]
        at = rest.rfind("@")
        while at >= 0:
            password = rest[:at].partition(":")[2]
            for candidate in (password, unquote(password)):
                if len(candidate) >= _MIN_SECRET:
                    found.add(candidate)
            at = rest.rfind("@", 0, at)
    return found


def scrub(environ: MutableMapping[str, str], settings: Settings) -> list[str]:
    """Remove connection settings from ``environ``; return the names removed (never values)."""
    secrets = secrets_of([settings.broker_url, settings.result_backend_url])
    doomed = [
        name
        for name, value in environ.items()
        if name in CONNECTION_VARIABLES or any(secret in value for secret in secrets)
    ]
    for name in doomed:
        del environ[name]
    return sorted(doomed)


def scrub_worker_environment(settings: Settings) -> list[str]:
    """``scrub`` this process's environment (the worker's main process, before the pool forks)."""
    return scrub(os.environ, settings)
