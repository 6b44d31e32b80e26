"""Settings for distributed mode, read from ``DEVCTL_*`` environment variables.

One object configures both sides (the coordinator's ``CeleryRunner`` and the
workers), so the Redis keys, expiries and time limits always agree.
Never print a URL from here without :func:`redact_url`: broker URLs carry passwords.
"""

from __future__ import annotations

import string
from typing import Any
from urllib.parse import parse_qsl, urlencode

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from devctl_dist.core.exceptions import UsageError

_SECRET_QUERY_KEYS = {"password", "pass", "token", "secret"}
_HOST_CHARS = frozenset(string.ascii_letters + string.digits + "-._%~")
_SCHEME_CHARS = frozenset(string.ascii_letters + string.digits + "+.-")
_HEX_COLON = frozenset(string.hexdigits + ":.%")


def redact_url(url: str) -> str:
    """Return ``url`` with every password (in the userinfo or the query) replaced by ``***``.

    Passwords are often not percent-encoded and may hold ``/ # ? @ :``, which
    ends the authority early for ``urlsplit``: the userinfo is instead taken up
    to the last ``@`` that is followed by a plausible ``host[:port]``. A URL we
    cannot make sense of is redacted more, never less. Kombu's ``;``-separated
    failover lists are redacted one by one.
    """
    urls: list[str] = []
    for part in url.split(";"):
        if urls and not _starts_with_scheme(part):
            urls[-1] += ";" + part  # a ';' inside a password, not a separator
        else:
            urls.append(part)
    return ";".join(_redact_one(one) for one in urls)


def _starts_with_scheme(text: str) -> bool:
    scheme, sep, _ = text.partition("://")
    return bool(sep and scheme) and all(c in _SCHEME_CHARS for c in scheme)


def _redact_one(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if not sep:
        return "<unparsable url>" if "@" in url else url
    at = _userinfo_end(rest)
    prefix = ""
    if at >= 0:
        user, colon, _ = rest[:at].partition(":")
        prefix = f"{user}:***@" if colon else f"{user}@"
        rest = rest[at + 1 :]
    return f"{scheme}://{prefix}{_redact_query(rest)}"


def _userinfo_end(rest: str) -> int:
    """Index of the ``@`` ending the userinfo in ``rest`` (after ``scheme://``), or -1."""
    at = rest.rfind("@")
    last = at
    while at >= 0:
        if _is_host_port(_authority_tail(rest[at + 1 :])):
            return at
        at = rest.rfind("@", 0, at)
    return last


def _authority_tail(text: str) -> str:
    """``text`` up to the first ``/``, ``?`` or ``#``: what follows the userinfo in an authority."""
    end = len(text)
    for stop in "/?#":
        found = text.find(stop)
        if 0 <= found < end:
            end = found
    return text[:end]


def _is_host_port(text: str) -> bool:
    """``host``, ``host:port``, ``[v6]`` or ``[v6]:port`` (empty host allowed, e.g. unix sockets)."""
    if text.startswith("["):
        host, bracket, port = text[1:].partition("]")
        if not bracket or not all(c in _HEX_COLON for c in host):
            return False
        return port == "" or (port.startswith(":") and port[1:].isdigit())
    host, _, port = text.partition(":")
    return all(c in _HOST_CHARS for c in host) and (port == "" or port.isdigit())


def _redact_query(rest: str) -> str:
    """Mask secret-looking query parameters in ``host/path?query#fragment``."""
    before, hashmark, fragment = rest.partition("#")
    head, question, query = before.partition("?")
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, "***" if k.lower() in _SECRET_QUERY_KEYS else v) for k, v in pairs], safe="*")
    return f"{head}{question}{query}{hashmark}{fragment}"


_REDIS_SCHEMES = ("redis", "rediss", "unix")


class Settings(BaseSettings):
    """Broker, result backend, limits and grace periods for distributed mode."""

    model_config = SettingsConfigDict(env_prefix="DEVCTL_", extra="ignore", hide_input_in_errors=True)

    broker_url: str = "redis://localhost:6379/0"
    result_backend: str | None = None
    default_queue: str = "default"
    result_expires: int = Field(default=24 * 3600, gt=0, description="seconds results and reports live")
    visibility_timeout: int = Field(
        default=12 * 3600,
        gt=0,
        description="seconds before Redis re-delivers an unacked message: must exceed the longest step",
    )
    task_time_limit: int | None = Field(
        default=None,
        gt=0,
        description="hard limit per task in seconds; default: visibility_timeout minus 10 minutes",
    )
    worker_ping_timeout: float = Field(default=3.0, gt=0)
    broker_connect_timeout: float = Field(default=2.0, gt=0)
    kill_grace: float = Field(default=3.0, ge=0)
    report_grace: float = Field(
        default=15.0, gt=0, description="slack after a step's timeout before its silence is a failure"
    )
    lease_seconds: int = Field(default=15, ge=3, description="a running step's lease; renewed every third")
    reconcile_interval: float = Field(default=5.0, gt=0)
    broker_outage_limit: float = Field(
        default=30.0, gt=0, description="seconds without the broker before a run gives up (exit 3)"
    )
    queue_orphan_limit: float = Field(
        default=30.0, gt=0, description="seconds a step may wait in a queue no live worker serves"
    )
    queue_rate_limits: dict[str, str] = Field(
        default_factory=dict,
        description='per-queue Celery rate limit for workers serving the queue, e.g. {"api": "10/s"}',
    )

    @field_validator("broker_url", "result_backend")
    @classmethod
    def _redis_only(cls, value: str | None) -> str | None:
        """Reports, leases and the output stream live in Redis: another broker cannot carry a run."""
        if value is not None and value.split("://", 1)[0].lower() not in _REDIS_SCHEMES:
            shown = redact_url(value)
            raise ValueError(f"must be a Redis URL (redis://, rediss:// or unix://), got {shown!r}")
        return value

    @model_validator(mode="after")
    def _time_limit_below_visibility(self) -> Settings:
        """A step must be killed before Redis hands its message to a second worker."""
        if self.task_time_limit is None:
            self.task_time_limit = max(60, self.visibility_timeout - 600)
        if self.task_time_limit >= self.visibility_timeout:
            raise ValueError(
                f"task_time_limit ({self.task_time_limit}s) must be below "
                f"visibility_timeout ({self.visibility_timeout}s), or a long step runs twice"
            )
        return self

    @property
    def result_backend_url(self) -> str:
        """The result backend, defaulting to the broker."""
        return self.result_backend or self.broker_url

    @property
    def hard_time_limit(self) -> int:
        """``task_time_limit`` after defaulting (never None once validated)."""
        assert self.task_time_limit is not None
        return self.task_time_limit

    def safe_broker_url(self) -> str:
        return redact_url(self.broker_url)


def load_settings(**overrides: Any) -> Settings:
    """``Settings(**overrides)``, or a ``UsageError`` with one line naming each bad variable.

    Pydantic's own message quotes the input values, which may hold a broker password.
    """
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            where = "_".join(str(part) for part in error["loc"]).upper()
            problems.append(f"DEVCTL_{where}: {error['msg']}" if where else str(error["msg"]))
        raise UsageError("invalid settings: " + "; ".join(problems)) from None
