"""How many requests the model server works on at once, when it says so (llama.cpp).

The connector announces a slot count in `hello` (docs/connector-protocol.md, "Slots"); the server
sends it no more requests at once than that and queues the rest, fairly across tenants. Without
anything better the count is `--max-concurrency`. llama.cpp's server tells its real one: GET
`/props` has `total_slots`, and GET `/slots` lists one entry per slot (it may be switched off, and
it can be large: it shows what each slot is doing). Both live at the server's root, not under
`/v1`. Ollama and vLLM answer 404: `--max-concurrency` stands.

Best effort and bounded: a few seconds at most, a capped body, any failure means "unknown". The
answer is never trusted beyond `--max-concurrency` (the operator's limit) nor `MAX_SLOTS`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from .config import Config, upstream_origin
from .protocol import MAX_SLOTS, JSONDecodeError, loads

log = logging.getLogger("tokios_connector")

PROBE_TIMEOUT = 3.0  # seconds per path
PROBE_BODY_LIMIT = 1024 * 1024  # bytes read of an answer; /slots with long prompts may be larger
# While connected, the connector asks again this often (the model server may have restarted with
# another --parallel), and tells a server that reads `slots` frames when the count changed.
PROBE_INTERVAL = 30.0


async def count(http: httpx.AsyncClient, config: Config) -> int:
    """The slot count to announce in `hello`."""
    return slot_count(await probe(http, upstream_origin(config.upstream), config.upstream_key), config.max_concurrency)


async def follow(
    http: httpx.AsyncClient, config: Config, announced: int, announce: Callable[[int], Awaitable[None]]
) -> None:
    """Ask the model server for its slot count now and then, and `announce` it when it changed. A
    model server that does not answer keeps the count it had (it may be restarting)."""
    while True:
        await asyncio.sleep(PROBE_INTERVAL)
        probed = await probe(http, upstream_origin(config.upstream), config.upstream_key)
        if probed is None:
            continue
        new = slot_count(probed, config.max_concurrency)
        if new != announced:
            log.info("the model server now has %d slots (was %d)", new, announced)
            announced = new
            await announce(new)


def slot_count(probed: int | None, max_concurrency: int) -> int:
    """The count to announce: what the model server said, within the operator's limit."""
    count = probed if probed is not None else max_concurrency
    return max(1, min(count, max_concurrency, MAX_SLOTS))


async def probe(http: httpx.AsyncClient, origin: str, upstream_key: str | None) -> int | None:
    """llama.cpp's slot count, or None when the upstream does not say (or cannot be asked)."""
    headers = {"authorization": f"Bearer {upstream_key}"} if upstream_key else {}
    for path, read in (("/props", _from_props), ("/slots", _from_slots)):
        try:
            body = await asyncio.wait_for(_get(http, origin + path, headers), PROBE_TIMEOUT)
        except (httpx.HTTPError, asyncio.TimeoutError, OSError):  # noqa: UP041 - a distinct class on Python 3.10
            continue
        if body is None:
            continue
        try:
            count = read(loads(body))
        except (JSONDecodeError, ValueError):
            continue
        if count is not None:
            return count
    return None


async def _get(http: httpx.AsyncClient, url: str, headers: dict[str, str]) -> bytes | None:
    async with http.stream("GET", url, headers=headers) as response:
        if response.status_code != 200:
            return None
        body = bytearray()
        async for chunk in response.aiter_raw():
            body += chunk
            if len(body) > PROBE_BODY_LIMIT:
                return None
        return bytes(body)


def _from_props(data: Any) -> int | None:
    value = data.get("total_slots") if isinstance(data, dict) else None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        return None
    return value


def _from_slots(data: Any) -> int | None:
    return len(data) if isinstance(data, list) and data else None
