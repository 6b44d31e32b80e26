"""Optional signing of step messages: a worker with a key runs only what a holder of the key sent.

Celery messages are plain JSON in Redis: anyone who can write to Redis could
otherwise make every worker run a command. With ``DEVCTL_SIGNING_KEY`` set on the
coordinator and the workers, each task carries an HMAC-SHA256 of its arguments
(run id, step name, the rendered step, the run's generation); a worker with a key
refuses, without running or reporting anything, a task whose signature is missing
or wrong. Replays of a signed task reuse its task id, which the worker's claim
turns away once the step ran (``state``).

The key is read once, when this module is imported (before the worker scrubs its
environment, see ``worker_env``), so pool processes inherit it from memory.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from typing import Any

SIGNING_KEY_ENV = "DEVCTL_SIGNING_KEY"


def _read_key() -> bytes | None:
    value = os.environ.get(SIGNING_KEY_ENV, "")
    return value.encode() if value else None


_KEY: list[bytes | None] = [_read_key()]


def signing_key() -> bytes | None:
    """The key this process signs and verifies with (None: signing off)."""
    return _KEY[0]


def set_signing_key(key: bytes | None) -> None:
    """Replace the key (tests; a process that reads it from a file)."""
    _KEY[0] = key


def sign(key: bytes, run_id: str, step_name: str, spec: dict[str, Any], generation: int | None) -> str:
    """The hex HMAC-SHA256 of the task's arguments in a canonical JSON form."""
    body = json.dumps(
        [run_id, step_name, spec, generation], sort_keys=True, separators=(",", ":"), ensure_ascii=True
    )
    return hmac.new(key, body.encode(), hashlib.sha256).hexdigest()


def verify(
    key: bytes,
    run_id: str,
    step_name: str,
    spec: dict[str, Any],
    generation: int | None,
    signature: object,
) -> bool:
    """True when ``signature`` is the HMAC of these arguments (constant-time comparison)."""
    if not isinstance(signature, str):
        return False
    return hmac.compare_digest(sign(key, run_id, step_name, spec, generation), signature)
