"""Which connectors are live for which deployment.

In the embedded default presence is this process's memory. With Redis it is one hash per
deployment (`tokios:presence:<deployment id>`, field = the consumer's channel name) so that any
process can route to a connector held by any other. Entries carry the last heartbeat; readers
ignore (and delete) entries older than the heartbeat timeout, so a process that died without
cleaning up leaves no ghost for longer than that.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field

import orjson
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from redis.exceptions import RedisError

from tokios_site.redis import get_async_redis, get_sync_redis, redis_enabled, report_outage

log = logging.getLogger("tokios.tunnel")

# Presence read from Redis is reused for this long by the routing process; a connector that
# vanished in between is caught by the dispatch acknowledgement (see router.py).
READ_TTL = 0.5


@dataclass(slots=True)
class ConnectorInfo:
    channel: str
    deployment_id: int
    token_id: int
    connector_id: str
    version: str
    remote: str
    connected_since: float
    last_heartbeat: float
    inflight: int = 0
    max_concurrency: int = 0
    draining: bool = False
    upstream_model: str | None = None
    extra: dict = field(default_factory=dict)

    @property
    def alive(self) -> bool:
        return time.time() - self.last_heartbeat < settings.HEARTBEAT_TIMEOUT


_local: dict[int, dict[str, ConnectorInfo]] = {}


def _redis_failed(exc: Exception) -> None:
    """While Redis is down each process routes to its own connectors only."""
    report_outage(log, "connector presence in Redis failed; routing to this process's connectors only", exc)


_read_cache: dict[int, tuple[float, list[ConnectorInfo]]] = {}


def _key(deployment_id: int) -> str:
    return f"tokios:presence:{deployment_id}"


async def publish(info: ConnectorInfo) -> None:
    """Announce or refresh a connector (on connect and on every heartbeat)."""
    _local.setdefault(info.deployment_id, {})[info.channel] = info
    if redis_enabled():
        redis = get_async_redis()
        try:
            await redis.hset(_key(info.deployment_id), info.channel, orjson.dumps(asdict(info)))
            await redis.expire(_key(info.deployment_id), int(settings.HEARTBEAT_TIMEOUT * 4))
        except (RedisError, OSError) as exc:
            _redis_failed(exc)


async def withdraw(info: ConnectorInfo) -> None:
    _local.get(info.deployment_id, {}).pop(info.channel, None)
    _read_cache.pop(info.deployment_id, None)
    if redis_enabled():
        try:
            await get_async_redis().hdel(_key(info.deployment_id), info.channel)
        except (RedisError, OSError) as exc:
            _redis_failed(exc)


def local_connectors(deployment_id: int) -> list[ConnectorInfo]:
    return [info for info in _local.get(deployment_id, {}).values() if info.alive]


async def live_connectors(deployment_id: int, *, fresh: bool = False) -> list[ConnectorInfo]:
    if not redis_enabled():
        return local_connectors(deployment_id)
    now = time.monotonic()
    cached = _read_cache.get(deployment_id)
    if cached and not fresh and cached[0] > now:
        return cached[1]
    try:
        raw = await get_async_redis().hgetall(_key(deployment_id))
    except (RedisError, OSError) as exc:
        _redis_failed(exc)
        return local_connectors(deployment_id)
    infos, dead = [], []
    for value in raw.values():
        info = ConnectorInfo(**orjson.loads(value))
        # The local copy has the exact in-flight count; Redis has the one from the last heartbeat.
        local = _local.get(deployment_id, {}).get(info.channel)
        if local is not None:
            info = local
        (infos if info.alive else dead).append(info)
    if dead:
        try:
            await get_async_redis().hdel(_key(deployment_id), *[info.channel for info in dead])
        except (RedisError, OSError) as exc:
            _redis_failed(exc)
    _read_cache[deployment_id] = (now + READ_TTL, infos)
    return infos


def forget(deployment_id: int, channel: str) -> None:
    """Drop a connector that failed to acknowledge a dispatch."""
    _read_cache.pop(deployment_id, None)
    if redis_enabled():
        get_sync_redis().hdel(_key(deployment_id), channel)


def live_connectors_sync(deployment_id: int) -> list[ConnectorInfo]:
    """For dashboards and the management API (sync code)."""
    if not redis_enabled():
        return local_connectors(deployment_id)
    raw = get_sync_redis().hgetall(_key(deployment_id))
    infos = [ConnectorInfo(**orjson.loads(value)) for value in raw.values()]
    return sorted((i for i in infos if i.alive), key=lambda i: i.connected_since)


def online_deployment_ids(deployment_ids: list[int]) -> set[int]:
    return {did for did in deployment_ids if live_connectors_sync(did)}


def token_group(token_id: int) -> str:
    return f"tokios-connector-token-{token_id}"


def disconnect_token(token_id: int) -> None:
    """Close every live connector using a revoked token, on whichever process holds it."""
    layer = get_channel_layer()
    if layer is not None:
        async_to_sync(layer.group_send)(token_group(token_id), {"type": "tunnel.revoked"})
