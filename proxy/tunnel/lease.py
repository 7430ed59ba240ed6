"""This server process's lease in Redis: how other processes tell that it is still alive.

A request can hold a slot on a connector that another process holds, and a request can wait in a
deployment's queue in Redis; both are the waiting process's. If that process dies (SIGKILL, OOM,
a lost machine) nothing would ever give the slot or the place in line back. So each process that
sends a request to another process's connector, or queues one, keeps a key
`tokios:lease:<process id>` alive (it expires `LEASE_TTL` seconds after its last refresh), and
names itself in what it sends. The process holding a connector checks the leases of the processes
whose requests it serves now and then (session.py), and cancels those of a dead one; the queue
drops a dead process's places in line when a slot it was handed goes unclaimed (queue.py).

Only with Redis: the embedded server is one process.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
from collections.abc import Iterable

from redis.exceptions import RedisError

from lib.loops import for_this_loop
from lib.redis import get_async_redis, report_outage

log = logging.getLogger("tokios.tunnel")

LEASE_TTL = 15  # seconds a lease outlives its last refresh
REFRESH = 5.0  # seconds between refreshes
# Seconds a lease must stay missing before its process counts as dead: after a Redis restart every
# lease is gone until its process's next refresh.
CONFIRM_AFTER = 2 * REFRESH

_identity: dict[int, str] = {}  # pid → this process's id (a forked child must not inherit its parent's)
_keepers: dict = {}  # per event loop: the task refreshing the lease


def process_id() -> str:
    pid = os.getpid()
    identity = _identity.get(pid)
    if identity is None:
        identity = _identity[pid] = f"{socket.gethostname()[:40]}:{pid}:{secrets.token_hex(4)}"
    return identity


def _key(process: str) -> str:
    return f"tokios:lease:{process}"


async def hold() -> str:
    """This process's id, its lease written and kept fresh from now on."""
    process = process_id()
    keeper = for_this_loop(_keepers, "lease", _Keeper)
    if keeper.task is None or keeper.task.done():
        await _refresh(process)  # before anyone can look for it
        keeper.task = asyncio.create_task(_keep(process))
    return process


class _Keeper:
    task: asyncio.Task | None = None


async def _refresh(process: str) -> None:
    try:
        await get_async_redis().set(_key(process), b"1", ex=LEASE_TTL)
    except (RedisError, OSError) as exc:
        report_outage(log, "could not refresh this process's lease in Redis", exc)


async def _keep(process: str) -> None:
    while True:
        await asyncio.sleep(REFRESH)
        await _refresh(process)


async def dead(processes: Iterable[str]) -> set[str]:
    """Those of `processes` whose lease has expired. None of them when Redis cannot say: a request
    is never cancelled on a guess."""
    names = sorted({process for process in processes if process})
    if not names:
        return set()
    try:
        found = await get_async_redis().mget([_key(name) for name in names])
    except (RedisError, OSError) as exc:
        report_outage(log, "could not read process leases in Redis", exc)
        return set()
    return {name for name, value in zip(names, found, strict=True) if value is None}
