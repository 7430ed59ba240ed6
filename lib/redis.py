"""Process-wide Redis clients, one async client per running event loop."""

from __future__ import annotations

import asyncio
import functools
import logging
import time

from django.conf import settings

from .loops import for_this_loop

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

    # Timeouts bound a hung Redis without wrapping every call in asyncio.wait_for.
    return for_this_loop(
        _async_clients,
        settings.REDIS_URL,
        lambda: aioredis.Redis.from_url(
            settings.REDIS_URL, max_connections=512, socket_timeout=2.0, socket_connect_timeout=2.0
        ),
    )


def get_sync_redis():
    return _sync_client(settings.REDIS_URL)


@functools.cache
def _sync_client(url: str):
    import redis

    return redis.Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)
