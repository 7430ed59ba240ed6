"""Which connectors are live for which deployment.

Every process knows the connectors it holds itself and always routes to them, whatever Redis
says. With Redis, presence is also one hash per deployment (`tokios:presence:<deployment id>`,
field = the consumer's channel name) so that any process can route to a connector held by any
other. Each process republishes its own connectors every `PRESENCE_REFRESH` seconds: Redis keeps
nothing on disk, and after a restart it knows every connector again within that time; the
republished entry also carries the connector's current load. Readers ignore (and delete) entries
whose connector missed its heartbeats, or whose process stopped republishing them (a process that
died), so a ghost lasts no longer than `stale_after()`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import asdict, dataclass

import orjson
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from redis.exceptions import RedisError

from lib.redis import get_async_redis, get_sync_redis, redis_enabled, report_outage
from tokios_connector.protocol import MAX_SLOTS

log = logging.getLogger("tokios.tunnel")

# Presence read from Redis is reused for this long by the routing process; a connector that
# vanished in between is caught by the dispatch acknowledgement (see router.py).
READ_TTL = 0.5


def stale_after() -> float:
    """Seconds after which an entry its process stopped republishing is dead. Generous, so that a
    process whose event loop is busy for a few seconds is not taken for dead."""
    return max(10.0, 10 * settings.PRESENCE_REFRESH)


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
    inflight: int = 0  # requests it holds, and slots promised to queued requests
    max_concurrency: int = 0
    # Requests it takes at once (1..protocol.MAX_SLOTS); more wait in the deployment's queue. 0 in
    # entries of a version that did not publish it: see `capacity`.
    slots: int = 0
    draining: bool = False
    upstream_model: str | None = None
    # What its upstream speaks natively and the models it serves (protocol.Hello); None: not announced.
    surfaces: list[str] | None = None
    models: list[str] | None = None
    refreshed: float = 0.0  # when its process last republished it (0: never, i.e. a local entry)

    @property
    def capacity(self) -> int:
        return self.slots or max(1, min(self.max_concurrency, MAX_SLOTS))

    @property
    def alive(self) -> bool:
        now = time.time()
        if now - self.last_heartbeat >= settings.HEARTBEAT_TIMEOUT:
            return False
        return not self.refreshed or now - self.refreshed < stale_after()


_FIELDS = frozenset(ConnectorInfo.__dataclass_fields__)


def _parse(raw: bytes) -> ConnectorInfo | None:
    try:
        data = orjson.loads(raw)
        # Fields a newer version added are left out, so that processes of two versions side by
        # side (a rolling upgrade) do not take each other's connectors for damaged entries.
        return ConnectorInfo(**{name: value for name, value in data.items() if name in _FIELDS})
    except (orjson.JSONDecodeError, TypeError, AttributeError):  # written by another version, or damaged
        return None


_local: dict[int, dict[str, ConnectorInfo]] = {}  # this process's connectors, by deployment
_read_cache: dict[int, tuple[float, list[ConnectorInfo]]] = {}
_keeper: asyncio.Task | None = None


def _redis_failed(exc: Exception) -> None:
    """While Redis is down each process routes to its own connectors only."""
    report_outage(log, "connector presence in Redis failed; routing to this process's connectors only", exc)


def _key(deployment_id: int) -> str:
    return f"tokios:presence:{deployment_id}"


async def publish(info: ConnectorInfo) -> None:
    """Announce a connector (on connect, and when it starts draining)."""
    _local.setdefault(info.deployment_id, {})[info.channel] = info
    _read_cache.pop(info.deployment_id, None)
    if not redis_enabled():
        return
    _ensure_keeper()
    await _republish([info])


async def withdraw(info: ConnectorInfo) -> None:
    """Forget a connector at once, here and (through Redis) in every other process."""
    local = _local.get(info.deployment_id, {})
    local.pop(info.channel, None)
    if not local:
        _local.pop(info.deployment_id, None)
    _read_cache.pop(info.deployment_id, None)
    if redis_enabled():
        try:
            await get_async_redis().hdel(_key(info.deployment_id), info.channel)
        except (RedisError, OSError) as exc:
            _redis_failed(exc)


async def _republish(infos: list[ConnectorInfo]) -> None:
    now = time.time()
    expire = int(max(settings.HEARTBEAT_TIMEOUT, stale_after()) * 4)
    try:
        async with get_async_redis().pipeline(transaction=False) as pipe:
            for info in infos:
                info.refreshed = now
                pipe.hset(_key(info.deployment_id), info.channel, orjson.dumps(asdict(info)))
                pipe.expire(_key(info.deployment_id), expire)
            await pipe.execute()
    except (RedisError, OSError) as exc:
        _redis_failed(exc)


def _ensure_keeper() -> None:
    global _keeper
    loop = asyncio.get_running_loop()
    if _keeper is None or _keeper.done() or _keeper.get_loop() is not loop:
        _keeper = loop.create_task(_keep_published())


async def _keep_published() -> None:
    """Republish this process's connectors until it holds none."""
    while _local:
        await asyncio.sleep(settings.PRESENCE_REFRESH)
        infos = [info for connectors in _local.values() for info in connectors.values()]
        if infos and redis_enabled():
            await _republish(infos)
            # A connector withdrawn while that write was on its way must not stay written.
            gone = [info for info in infos if info.channel not in _local.get(info.deployment_id, {})]
            for info in gone:
                await withdraw(info)


def local_connectors(deployment_id: int) -> list[ConnectorInfo]:
    return [info for info in _local.get(deployment_id, {}).values() if info.alive]


async def live_connectors(deployment_id: int, *, fresh: bool = False) -> list[ConnectorInfo]:
    """Every live connector of a deployment: this process's own, and those Redis knows of."""
    if not redis_enabled():
        return local_connectors(deployment_id)
    now = time.monotonic()
    cached = _read_cache.get(deployment_id)
    if cached and not fresh and cached[0] > now:
        return cached[1]
    redis = get_async_redis()
    try:
        raw = await redis.hgetall(_key(deployment_id))
    except (RedisError, OSError) as exc:
        _redis_failed(exc)
        return local_connectors(deployment_id)
    local = _local.get(deployment_id, {})
    infos = local_connectors(deployment_id)
    dead = []
    for channel, value in raw.items():
        channel = channel.decode() if isinstance(channel, bytes) else channel
        if channel in local:
            continue  # the local copy is exact, and counted above
        info = _parse(value)
        if info is None or not info.alive:
            dead.append(channel)
        else:
            infos.append(info)
    if dead:
        try:
            await redis.hdel(_key(deployment_id), *dead)
        except (RedisError, OSError) as exc:
            _redis_failed(exc)
    _read_cache[deployment_id] = (now + READ_TTL, infos)
    return infos


async def is_alive(deployment_id: int, channel: str) -> bool:
    """Whether a connector (held by another process) is still live. True when Redis cannot say:
    a waiting request then falls back on its timeouts."""
    try:
        raw = await get_async_redis().hget(_key(deployment_id), channel)
    except (RedisError, OSError) as exc:
        _redis_failed(exc)
        return True
    info = _parse(raw) if raw is not None else None
    return info is not None and info.alive


async def forget(deployment_id: int, channel: str) -> None:
    """Drop a connector that failed to acknowledge a dispatch."""
    _read_cache.pop(deployment_id, None)
    if redis_enabled():
        try:
            await get_async_redis().hdel(_key(deployment_id), channel)
        except (RedisError, OSError) as exc:
            _redis_failed(exc)


def live_connectors_sync(deployment_id: int) -> list[ConnectorInfo]:
    """For dashboards and the management API (sync code)."""
    if not redis_enabled():
        return local_connectors(deployment_id)
    raw = get_sync_redis().hgetall(_key(deployment_id))
    infos = [info for info in map(_parse, raw.values()) if info is not None and info.alive]
    return sorted(infos, key=lambda i: i.connected_since)


def online_counts_sync(deployment_ids: list[int]) -> dict[int, int] | None:
    """Live connectors of each deployment (for /metrics; sync code, another thread than the
    loop's): this process's own, or every process's with Redis (one pipelined read). None when
    Redis cannot say."""
    if not redis_enabled():
        counts = {}
        for deployment_id in deployment_ids:
            connectors = _local.get(deployment_id)
            if connectors:  # copied in one step: the event loop may change it meanwhile
                counts[deployment_id] = sum(1 for info in list(connectors.values()) if info.alive)
        return counts
    try:
        with get_sync_redis().pipeline(transaction=False) as pipe:
            for deployment_id in deployment_ids:
                pipe.hvals(_key(deployment_id))
            replies = pipe.execute()
    except (RedisError, OSError) as exc:
        _redis_failed(exc)
        return None
    counts = {}
    for deployment_id, values in zip(deployment_ids, replies, strict=True):
        live = sum(1 for info in map(_parse, values) if info is not None and info.alive)
        if live:
            counts[deployment_id] = live
    return counts


def online_deployment_ids(deployment_ids: list[int]) -> set[int]:
    return {did for did in deployment_ids if live_connectors_sync(did)}


def token_group(token_id: int) -> str:
    return f"tokios-connector-token-{token_id}"


def disconnect_token(token_id: int) -> None:
    """Close every live connector using a revoked token, on whichever process holds it."""
    layer = get_channel_layer()
    if layer is not None:
        async_to_sync(layer.group_send)(token_group(token_id), {"type": "tunnel.revoked"})
