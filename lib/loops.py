"""Objects bound to one event loop (connections), kept per running loop.

A server has one loop; tests run one per test, so entries of closed loops are dropped as the
registry grows, and an entry is only returned to the very loop that made it (ids get reused).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable
from typing import TypeVar

T = TypeVar("T")


def for_this_loop(registry: dict, key: Hashable, create: Callable[[], T]) -> T:
    loop = asyncio.get_running_loop()
    entry = registry.get((id(loop), key))
    if entry is None or entry[0] is not loop:
        if len(registry) > 64:
            for stale in [k for k, (other, _) in registry.items() if other.is_closed()]:
                del registry[stale]
        entry = registry[(id(loop), key)] = (loop, create())
    return entry[1]
