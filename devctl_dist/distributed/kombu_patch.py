"""A worker-side patch for a kombu Redis transport defect that kills workers on a broker blip.

Measured with kombu 5.7.0 (the newest release; no release without it): when Redis
goes away while a worker holds an unacknowledged message and comes back within
about a second, the consumer releases its connection, which sets the transport's
``client`` to None; closing the channel then restores the unacknowledged message,
which builds a new connection pool from ``self.connection.client.hostname`` and
dies with ``AttributeError: 'NoneType' object has no attribute 'hostname'``.
Celery treats that as an unrecoverable error and the worker exits (3 of 8 trials
here; the same family as kombu #582 and #970).

The patch remembers each channel's connection info the first time it builds a
pool and uses it when the transport has already dropped it, so the restore
either works or fails with an ordinary ``ConnectionError`` that Celery's
reconnect loop handles. It is applied only in worker processes (``celeryd_init``),
only to the kombu versions it was checked against, and is idempotent.

A second patch (``reuse_clients``, workers and the coordinator) is for speed: kombu
builds a new ``redis.Redis`` for every publish, event and ack (``conn_or_acquire``),
and redis-py 8's constructor costs about 50 us (it builds its response-callback
table), about five times per step on a worker. The patch keeps one client per
channel and connection pool: clients are thread-safe, each command still takes a
connection from the channel's pool, and a new pool (after a reconnect) gets a new client.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

CHECKED_KOMBU = ((5, 3), (5, 7))  # inclusive range of (major, minor) this patch was read against
_MARK = "_devctl_patched"
_SAVED = "_devctl_conninfo"
_REUSE_MARK = "_devctl_reuses_clients"
_CLIENT = "_devctl_client"


@dataclass
class _TransportView:
    """The two attributes ``Channel._connparams`` reads from its transport."""

    client: Any
    default_port: int | None


def kombu_version() -> tuple[int, int]:
    import kombu

    major, minor, *_ = (int(part) for part in kombu.__version__.split(".")[:2])
    return major, minor


def applies_to(version: tuple[int, int]) -> bool:
    low, high = CHECKED_KOMBU
    return low <= version <= high


def apply() -> bool:
    """Patch ``kombu.transport.redis.Channel``; True when the patch is (now) in place."""
    from kombu.transport import redis as kombu_redis

    channel_cls: Any = kombu_redis.Channel
    if getattr(channel_cls, _MARK, False):
        return True
    version = kombu_version()
    if not applies_to(version) or not hasattr(channel_cls, "_connparams"):
        log.warning("kombu %s.%s: broker-blip patch not applied (checked %s)", *version, CHECKED_KOMBU)
        return False
    channel_cls._connparams = _remembering(channel_cls._connparams)
    channel_cls.close = _closing(channel_cls.close)
    setattr(channel_cls, _MARK, True)
    return True


def reuse_clients() -> bool:
    """Patch ``Channel._create_client`` to reuse one synchronous client per pool; idempotent."""
    from kombu.transport import redis as kombu_redis

    channel_cls: Any = kombu_redis.Channel
    if getattr(channel_cls, _REUSE_MARK, False):
        return True
    if not applies_to(kombu_version()) or not hasattr(channel_cls, "_create_client"):
        return False
    channel_cls._create_client = _reusing(channel_cls._create_client)
    setattr(channel_cls, _REUSE_MARK, True)
    return True


def _reusing(original: Any) -> Any:
    def _create_client(self: Any, asynchronous: bool = False) -> Any:
        if asynchronous:  # the consumer's own connection (BRPOP, LISTEN): as kombu made it
            return original(self, asynchronous=True)
        pool = self.pool
        cached = self.__dict__.get(_CLIENT)
        if cached is not None and cached[0] is pool:
            return cached[1]
        client = original(self, asynchronous=False)
        self.__dict__[_CLIENT] = (pool, client)
        return client

    return _create_client


def _remembering(original: Any) -> Any:
    """Wrap ``_connparams``: save the connection info, fall back to it once the transport lost it."""

    def _connparams(self: Any, asynchronous: bool = False) -> Any:
        transport = self.connection
        if transport is not None and transport.client is not None:
            self.__dict__[_SAVED] = _TransportView(transport.client, transport.default_port)
            return original(self, asynchronous=asynchronous)
        saved = self.__dict__.get(_SAVED)
        if saved is None:
            from redis.exceptions import ConnectionError as RedisConnectionError

            raise RedisConnectionError("broker connection already closed")
        self.connection = saved
        try:
            return original(self, asynchronous=asynchronous)
        finally:
            self.connection = transport

    return _connparams


def _closing(original: Any) -> Any:
    """Wrap ``close``: drop a pool the restore built after the transport let go of it."""

    def close(self: Any) -> None:
        try:
            original(self)
        finally:
            if self.__dict__.get(_SAVED) is not None and self.connection is None:
                self._disconnect_pools()

    return close
