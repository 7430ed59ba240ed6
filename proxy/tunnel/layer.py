"""Sending over the channel layer between processes, and the tunnel's messages on it.

A full channel (channels-redis raises ChannelFull past its capacity) slows the sender: it waits
and tries again, up to a deadline, and never loses the message or kills the consumer that sent
it. Credit windows keep that rare: what a request may have in flight is bounded.
"""

from __future__ import annotations

import asyncio
import time

from channels.exceptions import ChannelFull

from ..calls import Data, Ended, Failed, Item, Started

FULL_BACKOFF_FIRST = 0.005
FULL_BACKOFF_MAX = 0.2


async def send(layer, channel: str, message: dict, *, patience: float = 30.0) -> None:
    """`layer.send`, waiting while the channel is full; ChannelFull after `patience` seconds."""
    delay = FULL_BACKOFF_FIRST
    deadline = time.monotonic() + patience
    while True:
        try:
            await layer.send(channel, message)
            return
        except ChannelFull:
            if time.monotonic() + delay > deadline:
                raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, FULL_BACKOFF_MAX)


# Items travel between processes as small lists (msgpack in channels-redis).


def item_message(item: Item) -> dict:
    match item:
        case Data(data, blocks):
            body: list = ["data", data, blocks]
        case Started(status, headers):
            body = ["start", status, headers]
        case Ended(upstream_ms, ttfb_ms):
            body = ["end", upstream_ms, ttfb_ms]
        case Failed(code, message):
            body = ["error", code, message]
    return {"type": "tunnel.item", "item": body}


def message_item(message: dict) -> Item | None:
    """The item in a `tunnel.item` message; None for anything else (acknowledgements)."""
    body = message.get("item")
    match body:
        case ["data", bytes(data), int(blocks)]:
            return Data(data, blocks)
        case ["start", int(status), dict(headers)]:
            return Started(status, headers)
        case ["end", int(upstream_ms), int(ttfb_ms)]:
            return Ended(upstream_ms, ttfb_ms)
        case ["error", str(code), str(text)]:
            return Failed(code, text)
    return None
