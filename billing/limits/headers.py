"""The rate-limit response headers: `x-ratelimit-*` (OpenAI's), and `anthropic-ratelimit-*` on
/v1/messages."""

from __future__ import annotations

import math
from datetime import UTC, datetime

from .core import WINDOW_MS, Bucket

_HEADER_NAMES = {
    kind: (f"x-ratelimit-limit-{kind}", f"x-ratelimit-remaining-{kind}", f"x-ratelimit-reset-{kind}")
    for kind in ("requests", "tokens")
}


def go_duration(ms: int) -> str:
    """A duration as Go prints it (OpenAI's reset headers): `12ms`, `1s`, `1.5s`, `6m0s`, `1h0m0s`."""
    ms = max(0, int(ms))
    if ms == 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds = str(rest // 1000) if rest % 1000 == 0 else f"{rest / 1000:.3f}".rstrip("0")
    if hours:
        return f"{hours}h{minutes}m{seconds}s"
    if minutes:
        return f"{minutes}m{seconds}s"
    return f"{seconds}s"


def rfc3339(epoch_ms: int) -> str:
    seconds = math.ceil(epoch_ms / 1000)
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def rate_headers(
    buckets: list[Bucket], levels: list[float], now_ms: int, *, anthropic: bool = False, into: dict | None = None
) -> dict[str, str]:
    """The headers for the tightest key/org limit of each kind, added to `into` if given."""
    tightest: dict[str, tuple[int, Bucket, float]] = {}  # kind -> (remaining, bucket, level); first wins ties
    for bucket, level in zip(buckets, levels):  # noqa: B905 (no levels, no headers)
        remaining = int(level) if level > 0 else 0  # whole units left
        best = tightest.get(bucket.kind)
        if best is None or remaining < best[0]:
            tightest[bucket.kind] = (remaining, bucket, level)
    headers = {} if into is None else into
    for kind, (remaining, bucket, level) in tightest.items():
        capacity = bucket.capacity
        reset = max(0, math.ceil((capacity - level) * WINDOW_MS / capacity))  # ms until the bucket is full
        limit_name, remaining_name, reset_name = _HEADER_NAMES[kind]
        headers[limit_name] = str(capacity)
        headers[remaining_name] = str(remaining)
        headers[reset_name] = f"{reset}ms" if 0 < reset < 1000 else go_duration(reset)
        if anthropic:
            headers[f"anthropic-ratelimit-{kind}-limit"] = str(capacity)
            headers[f"anthropic-ratelimit-{kind}-remaining"] = str(remaining)
            headers[f"anthropic-ratelimit-{kind}-reset"] = rfc3339(now_ms + reset)
    return headers
