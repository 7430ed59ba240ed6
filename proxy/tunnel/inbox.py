"""A waiting request's inbox: the items its connector delivered, in order, read by one reader.

Not an `asyncio.Queue`: the reader takes consecutive body pieces in one go (a stream that fell
behind writes them to its client as one write), which needs a look at the next item that a Queue
does not offer. Its size is bounded by the tunnel's credit window (see `session.py`), not here.
"""

from __future__ import annotations

import asyncio
from collections import deque

from ..calls import Data, Item


class Inbox:
    __slots__ = ("items", "waiter")

    def __init__(self) -> None:
        self.items: deque[Item] = deque()
        self.waiter: asyncio.Future[None] | None = None

    def put(self, item: Item) -> None:
        self.items.append(item)
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def get(self, timeout: float | None) -> Item | None:
        """The next item (body pieces waiting together merged into one), or None after `timeout`."""
        items = self.items
        if not items:
            # A bare timer on the waiter rather than asyncio.timeout(): this wait happens several
            # times per request, and the context manager's bookkeeping cost more than the rest.
            loop = asyncio.get_running_loop()
            waiter = self.waiter = loop.create_future()
            timer = loop.call_later(timeout, _time_up, waiter) if timeout is not None else None
            try:
                await waiter
            finally:
                self.waiter = None
                if timer is not None:
                    timer.cancel()
            if not items:
                return None  # the time was up
        item = items.popleft()
        if isinstance(item, Data) and items and isinstance(items[0], Data):
            parts, blocks = [item.data], item.blocks
            while items and isinstance(more := items[0], Data):
                items.popleft()
                parts.append(more.data)
                blocks += more.blocks
            item = Data(b"".join(parts), blocks)
        return item


def _time_up(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
