"""Waiting for a slot when every live connector of a deployment is busy.

- Slots are counted where the connector is: its session (session.py) knows what it has in flight
  and what it promised, so a request that finds a free slot costs no Redis round trip, and a
  connector that leaves takes its slots with it.
- A request that finds none (router.py) takes a ticket in its deployment's line: a `FairQueue`
  (fair.py) in this process's memory, or, with Redis, one per deployment stored in Redis and
  changed in WATCH/MULTI transactions, so that every process shares one line and one fairness
  decision. The line is bounded (`TOKIOS_QUEUE_MAX_DEPTH`) and so is each wait
  (`TOKIOS_QUEUE_MAX_WAIT`).
- When a slot frees while the line may hold requests (a request ends or is cancelled, a promise
  lapses, a connector arrives or gets more slots), the session pops the next ticket (`fill`),
  promises it the slot for `RESERVE_TIMEOUT` seconds, and hands it over: to a waiter of this process
  directly, or as a `tunnel.grant` message to the grant channel of the process that waits. The
  waiter then sends its request to that connector, which takes it on the promise.
- With Redis, a process learns that a deployment's line may hold requests from `tunnel.waiting`
  notices, sent to the deployment's group (each connector consumer of the deployment is in it) by
  the process that queued one, and forgets it when a pop finds the line empty. While it believes
  the line is not empty, its connectors take no request that skipped the line.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

import orjson
from channels.exceptions import ChannelFull
from channels.layers import get_channel_layer
from django.conf import settings
from redis.exceptions import RedisError, WatchError

from lib.loops import for_this_loop
from lib.redis import get_async_redis, get_sync_redis, redis_enabled, report_outage

from . import layer as layer_messages
from . import lease
from .fair import FairQueue, Ticket
from .presence import ConnectorInfo

log = logging.getLogger("tokios.tunnel")
T = TypeVar("T")

# Seconds a slot popped for a queued request stays promised to it. Its process sends the request
# within milliseconds; one that is gone (or stuck) must not hold the slot for long.
RESERVE_TIMEOUT = 5.0
# Seconds between a waiting request's checks that its deployment still has a live connector, and,
# with Redis, between this process's reminders to the deployment's connectors that it waits.
POLL = 2.0
WATCH_TRIES = 100  # transactions retried when another process changed the line in between


class QueueFull(Exception):
    """The deployment's line holds `TOKIOS_QUEUE_MAX_DEPTH` requests already."""


class Slots(Protocol):
    """What `fill` needs of a connector's session."""

    info: ConnectorInfo
    closed: bool
    reserving: int

    def free_slots(self) -> int: ...

    def reserve(self, rid: str, process: str) -> None: ...

    def unreserve(self, rid: str) -> bool: ...


@dataclass(eq=False)
class Waiter:
    """A request of this process waiting in line; `granted` gets the channel of the connector whose
    slot it was promised."""

    deployment_id: int
    ticket: Ticket
    granted: asyncio.Future[str]
    queued_at: float  # time.monotonic()
    abandoned: bool = False  # it left after its ticket was popped: the slot goes back on arrival


WAITERS: dict[str, Waiter] = {}  # this process's waiting requests, by request id
_local: dict[int, FairQueue] = {}  # embedded mode: the deployments' lines (empty ones dropped)
_maybe_waiting: set[int] = set()  # Redis mode: deployments whose line may hold requests
_told: dict[int, float] = {}  # Redis mode: when this process last told a deployment it waits
_grants: dict = {}  # per event loop: this process's grant channel and its reader


def group(deployment_id: int) -> str:
    return f"tokios-queue-{deployment_id}"


def _key(deployment_id: int) -> str:
    return f"tokios:queue:{deployment_id}"


def maybe_waiting(deployment_id: int) -> bool:
    """Whether the deployment's line may hold requests: then no request may skip it."""
    if not redis_enabled():
        return deployment_id in _local
    return deployment_id in _maybe_waiting


def heard_waiting(deployment_id: int) -> None:
    """Another process queued a request for this deployment (a `tunnel.waiting` notice)."""
    _maybe_waiting.add(deployment_id)


# --- the line, in memory or in Redis ---------------------------------------------------------------


def _load(raw: bytes | None) -> FairQueue:
    if raw is None:
        return FairQueue()
    try:
        return FairQueue.load(orjson.loads(raw))
    except (ValueError, KeyError, TypeError) as exc:  # written by another version, or damaged
        log.error("a deployment's queue in Redis could not be read (%r); starting it over", exc)
        return FairQueue()


async def _change(deployment_id: int, change: Callable[[FairQueue], T]) -> T:
    """Apply `change` to the deployment's line, atomically across processes (it may run more than
    once, each time on a fresh copy, so it must not act on anything but the line)."""
    if not redis_enabled():
        queue = _local.get(deployment_id) or FairQueue()
        result = change(queue)
        if queue:
            _local[deployment_id] = queue
        else:
            _local.pop(deployment_id, None)
        return result
    key = _key(deployment_id)
    # Longer than any ticket can wait: a line nobody touches any more expires with its tickets.
    ttl = int(settings.QUEUE_MAX_WAIT * 2) + 60
    async with get_async_redis().pipeline(transaction=True) as pipe:
        for _ in range(WATCH_TRIES):
            try:
                await pipe.watch(key)
                queue = _load(await pipe.get(key))
                result = change(queue)
                pipe.multi()
                if queue:
                    pipe.set(key, orjson.dumps(queue.dump()), ex=ttl)
                else:
                    pipe.delete(key)
                await pipe.execute()
                return result
            except WatchError:
                continue
    raise RedisError(f"the queue of deployment {deployment_id} stayed too contended to change")


async def _read(deployment_id: int) -> FairQueue:
    if not redis_enabled():
        return _local.get(deployment_id) or FairQueue()
    return _load(await get_async_redis().get(_key(deployment_id)))


async def depth(deployment_id: int) -> int:
    """Requests waiting for the deployment (0 when Redis cannot say)."""
    try:
        return len(await _read(deployment_id))
    except (RedisError, OSError) as exc:
        report_outage(log, "could not read a deployment's queue in Redis", exc)
        return 0


def depth_sync(deployment_id: int) -> int:
    """Requests waiting for the deployment, for dashboards and the management API (sync code)."""
    if not redis_enabled():
        return len(_local.get(deployment_id) or ())
    try:
        return len(_load(get_sync_redis().get(_key(deployment_id))))
    except (RedisError, OSError) as exc:
        report_outage(log, "could not read a deployment's queue in Redis", exc)
        return 0


def depths_sync_many(deployment_ids: list[int]) -> dict[int, int] | None:
    """Requests waiting per deployment, the deployments with none left out (for /metrics; sync
    code, another thread than the loop's). None when Redis cannot say."""
    if not redis_enabled():
        lines = {deployment_id: _local.get(deployment_id) for deployment_id in deployment_ids}
        return {deployment_id: len(line) for deployment_id, line in lines.items() if line}
    depths = {}
    try:
        client = get_sync_redis()
        for start in range(0, len(deployment_ids), 500):
            ids = deployment_ids[start : start + 500]
            for deployment_id, raw in zip(ids, client.mget([_key(i) for i in ids]), strict=True):
                if raw is not None and (depth := len(_load(raw))):
                    depths[deployment_id] = depth
    except (RedisError, OSError) as exc:
        report_outage(log, "could not read the deployments' queues in Redis", exc)
        return None
    return depths


# --- the waiting side --------------------------------------------------------------------------------


async def enqueue(*, deployment_id: int, rid: str, org: int, key: int, wait: float) -> Waiter:
    """Take a place in the deployment's line, for at most `wait` seconds. QueueFull if it is full;
    RedisError (OSError) if Redis fails."""
    reply = process = ""
    if redis_enabled():
        process = await lease.hold()
        reply = await _grant_channel()
    ticket = Ticket(rid, org, key, time.time() + wait, reply, process)
    limit = settings.QUEUE_MAX_DEPTH

    def push(queue: FairQueue) -> bool:
        if len(queue) >= limit:
            return False
        queue.push(ticket)
        return True

    if not await _change(deployment_id, push):
        raise QueueFull
    waiter = WAITERS[rid] = Waiter(deployment_id, ticket, asyncio.get_running_loop().create_future(), time.monotonic())
    if redis_enabled():
        _maybe_waiting.add(deployment_id)
        await remind(deployment_id, now=True)
    return waiter


async def wait(waiter: Waiter, timeout: float) -> str | None:
    """The channel of the connector whose slot the request was handed, or None after `timeout`."""
    granted = waiter.granted
    if not granted.done():
        await asyncio.wait((granted,), timeout=max(0.0, timeout))
    if granted.done() and not granted.cancelled():
        return granted.result()
    return None


def done(waiter: Waiter) -> None:
    """The request left the line with its slot: this process stops knowing it as waiting."""
    if WAITERS.get(waiter.ticket.rid) is waiter:
        del WAITERS[waiter.ticket.rid]


async def leave(waiter: Waiter) -> str | None:
    """Leave the line (the client went away, or the wait is over). Returns the channel of a
    connector whose slot it had already been handed: the caller gives that slot back."""
    rid = waiter.ticket.rid
    if not waiter.granted.done():
        try:
            removed = await _change(waiter.deployment_id, lambda queue: queue.remove(rid))
        except (RedisError, OSError) as exc:
            report_outage(log, "could not leave a deployment's queue in Redis", exc)
            removed = False  # its ticket expires at its deadline
        if removed:
            done(waiter)
            waiter.granted.cancel()
            return None
    if waiter.granted.done() and not waiter.granted.cancelled():
        done(waiter)
        return waiter.granted.result()
    # Popped a moment ago: the slot is on its way, and goes back when it arrives.
    waiter.abandoned = True
    asyncio.get_running_loop().call_later(RESERVE_TIMEOUT, done, waiter)
    return None


async def position(waiter: Waiter) -> int:
    """Its place in line (1: next); 0 when it is no longer waiting or Redis cannot say."""
    try:
        return (await _read(waiter.deployment_id)).position(waiter.ticket.rid)
    except (RedisError, OSError) as exc:
        report_outage(log, "could not read a deployment's queue in Redis", exc)
        return 0


async def remind(deployment_id: int, *, now: bool = False) -> None:
    """Tell the deployment's connectors, in every process, that a request waits (Redis mode; at most
    once per POLL per process unless `now`, which a new ticket is)."""
    if not redis_enabled():
        return
    moment = time.monotonic()
    if not now and moment - _told.get(deployment_id, 0.0) < POLL:
        return
    _told[deployment_id] = moment
    try:
        await get_channel_layer().group_send(group(deployment_id), {"type": "tunnel.waiting"})
    except Exception as exc:  # the channel layer (Redis) failed: the holders' next release still pops
        report_outage(log, "could not tell a deployment's connectors that a request waits", exc)


# --- the holding side ----------------------------------------------------------------------------------


async def fill(session: Slots, *, force: bool = False) -> None:
    """Hand the session's free slots to the requests first in line. `force`: look even when this
    process has heard of nobody waiting (a connector that just arrived)."""
    info = session.info
    deployment_id = info.deployment_id
    if not (force or maybe_waiting(deployment_id)):
        return
    while session.free_slots() > 0 and not session.closed and not info.draining:
        session.reserving += 1  # the slot is taken while the pop is on its way
        try:
            ticket = await _change(deployment_id, lambda queue: queue.pop(time.time()))
        except (RedisError, OSError) as exc:
            report_outage(log, "could not take the next request from a deployment's queue in Redis", exc)
            return
        finally:
            session.reserving -= 1
        if ticket is None:
            _maybe_waiting.discard(deployment_id)
            return
        if redis_enabled():
            _maybe_waiting.add(deployment_id)  # more may wait: the next free slot looks again
        session.reserve(ticket.rid, ticket.process)
        if not await _hand_over(ticket, info.channel):
            session.unreserve(ticket.rid)


async def _hand_over(ticket: Ticket, channel: str) -> bool:
    """Give the request its slot; False if nobody will come for it."""
    waiter = WAITERS.get(ticket.rid)
    if waiter is not None:
        if waiter.abandoned or waiter.granted.done():
            done(waiter)
            return False
        waiter.granted.set_result(channel)
        return True
    if not ticket.reply:
        return False
    message = {"type": "tunnel.grant", "id": ticket.rid, "channel": channel}
    try:
        await layer_messages.send(get_channel_layer(), ticket.reply, message, patience=1.0)
    except ChannelFull:
        return False
    return True


async def drop_process(deployment_id: int, process: str) -> None:
    """Take a dead process's requests out of the deployment's line."""
    try:
        dropped = await _change(deployment_id, lambda queue: queue.remove_process(process))
    except (RedisError, OSError) as exc:
        report_outage(log, "could not clean a deployment's queue in Redis", exc)
        return
    if dropped:
        log.warning("dropped %d queued requests of process %s, which is gone", dropped, process)


# --- grants from other processes (Redis mode) ---------------------------------------------------------


class _Grants:
    channel = ""
    task: asyncio.Task | None = None


async def _grant_channel() -> str:
    """This process's channel for `tunnel.grant` messages, read by one task per event loop."""
    grants = for_this_loop(_grants, "grants", _Grants)
    if grants.task is None or grants.task.done():
        layer = get_channel_layer()
        grants.channel = await layer.new_channel()
        grants.task = asyncio.create_task(_receive_grants(layer, grants.channel))
    return grants.channel


async def _receive_grants(layer, channel: str) -> None:
    while True:
        try:
            message = await layer.receive(channel)
        except Exception as exc:  # Redis down or restarting: keep listening once it is back
            report_outage(log, "the channel layer failed; queued requests cannot hear of free slots", exc)
            await asyncio.sleep(0.5)
            continue
        rid, connector = message.get("id"), message.get("channel")
        if message.get("type") != "tunnel.grant" or not isinstance(rid, str) or not isinstance(connector, str):
            continue
        waiter = WAITERS.get(rid)
        if waiter is not None and not waiter.abandoned and not waiter.granted.done():
            waiter.granted.set_result(connector)
            continue
        if waiter is not None:
            done(waiter)
        # Nobody here will use that slot any more: give it back at once rather than let it lapse.
        with contextlib.suppress(ChannelFull):
            await layer_messages.send(layer, connector, {"type": "tunnel.cancel", "id": rid}, patience=1.0)
