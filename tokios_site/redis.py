"""Process-wide Redis clients, one async client per running event loop."""

from __future__ import annotations

import asyncio
import functools

from django.conf import settings

_async_clients: dict[int, object] = {}


def redis_enabled() -> bool:
    return bool(settings.REDIS_URL)


def get_async_redis():
    """The redis.asyncio client for the current loop (connection pools are bound to one loop)."""
    import redis.asyncio as aioredis

    loop = asyncio.get_running_loop()
    client = _async_clients.get(id(loop))
    if client is None:
        # Timeouts bound a hung Redis without wrapping every call in asyncio.wait_for.
        client = aioredis.Redis.from_url(
            settings.REDIS_URL, max_connections=512, socket_timeout=2.0, socket_connect_timeout=2.0
        )
        _async_clients[id(loop)] = client
    return client


@functools.cache
def get_sync_redis():
    import redis

    return redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2.0, socket_connect_timeout=2.0)
