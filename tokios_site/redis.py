"""Process-wide Redis clients, one async client per running event loop."""

from __future__ import annotations

import asyncio
import functools
import logging
import time

from django.conf import settings

_async_clients: dict[tuple[int, str], tuple[asyncio.AbstractEventLoop, object]] = {}


_last_reported: dict[str, float] = {}


def report_outage(log: logging.Logger, what: str, exc: BaseException, *, every: float = 10.0) -> None:
    """Log a failure of a shared service once per `every` seconds per `what`, not once per request."""
    now = time.monotonic()
    if now - _last_reported.get(what, -every) >= every:
        _last_reported[what] = now
        log.error("%s: %r", what, exc)


def redis_enabled() -> bool:
    return bool(settings.REDIS_URL)


def get_async_redis():
    """The redis.asyncio client for the current loop and REDIS_URL (connection pools are bound to
    one loop; tests run many loops, and some point REDIS_URL elsewhere for a while)."""
    import redis.asyncio as aioredis

    loop = asyncio.get_running_loop()
    entry = _async_clients.get((id(loop), settings.REDIS_URL))
    if entry is None or entry[0] is not loop:
        if len(_async_clients) > 64:
            for stale in [k for k, (other, _) in _async_clients.items() if other.is_closed()]:
                del _async_clients[stale]
        # Timeouts bound a hung Redis without wrapping every call in asyncio.wait_for.
        client = aioredis.Redis.from_url(
            settings.REDIS_URL, max_connections=512, socket_timeout=2.0, socket_connect_timeout=2.0
        )
        entry = _async_clients[(id(loop), settings.REDIS_URL)] = (loop, client)
    return entry[1]


def get_sync_redis():
    return _sync_client(settings.REDIS_URL)


@functools.cache
def _sync_client(url: str):
    import redis

    return redis.Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)
