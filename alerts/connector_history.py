"""A deployment's connect history for people: each disconnect's close code in words, and uptime (the
share of a window during which at least one connector was connected), computed from the history the
tunnel's signals leave (alerts/receivers.py) and the connectors live right now.

A connection whose end was never recorded (its server process died before it could write one) ends,
for the uptime, where the evidence says it did: at its token's next connect (the connector came back
after the restart) or its token's last heartbeat, whichever is first; never later than now.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from deployments.models import ConnectorToken, Deployment
from proxy.tunnel.presence import ConnectorInfo
from tokios_connector import protocol

from .models import ConnectorEvent, ConnectorEventKind

# The rows one uptime reads at most (a connector reconnecting every few seconds for a week writes
# hundreds of thousands): past it, the oldest part of the window is judged from what is left.
MAX_UPTIME_EVENTS = 20_000
WINDOWS = {"24h": timedelta(hours=24), "7d": timedelta(days=7)}

CLOSE_WORDS = {
    1000: "closed normally",
    1001: "the connector stopped (or went away)",
    1002: "the connector refused the server's welcome",
    1005: "closed without a code",
    1006: "connection lost (no close frame: network failure, or the connector was killed)",
    1011: "the server failed",
    1012: "the server restarted",
    protocol.CLOSE_AUTH_REJECTED: "token rejected",
    protocol.CLOSE_PROTOCOL_ERROR: "protocol error",
    protocol.CLOSE_TOKEN_REVOKED: "token revoked (or deployment deleted)",
    protocol.CLOSE_VERSION_MISMATCH: "protocol version not supported",
    protocol.CLOSE_HEARTBEAT_TIMEOUT: "heartbeat timeout (the connector went silent)",
}
# What rows written before close codes were recorded say.
REASON_WORDS = {
    "connector_disconnected": "disconnected",
    "connector_protocol_error": "protocol error",
}


def close_words(close_code: int | None, reason: str = "") -> str:
    """A disconnect's cause in words: by its close code, else by the reason recorded with it."""
    if close_code is not None:
        return CLOSE_WORDS.get(close_code, f"closed with code {close_code}")
    if reason:
        return REASON_WORDS.get(reason, reason.replace("_", " "))
    return "the server stopped before it could say"


@dataclass(frozen=True)
class HistoryRow:
    kind: str  # connected / disconnected
    at: datetime
    connector_id: str
    token_label: str  # the token's name, else its prefix; "" if the token is gone
    close_code: int | None
    cause: str  # "" for a connect


def recent_events(deployment: Deployment, *, limit: int = 50) -> list[HistoryRow]:
    events = ConnectorEvent.objects.filter(deployment=deployment).select_related("token")[:limit]
    return [
        HistoryRow(
            kind=event.kind,
            at=event.at,
            connector_id=event.connector_id,
            token_label=token_label(event.token) if event.token is not None else "",
            close_code=event.close_code,
            cause="" if event.kind == ConnectorEventKind.CONNECTED else close_words(event.close_code, event.reason),
        )
        for event in events
    ]


def token_label(token: ConnectorToken) -> str:
    return token.name or f"{token.prefix}…"


def token_labels(deployment_id: int, token_ids: Iterable[int]) -> dict[int, str]:
    """The labels of a deployment's tokens by id (one query; none for no ids)."""
    wanted = set(token_ids)
    if not wanted:
        return {}
    tokens = ConnectorToken.objects.filter(deployment_id=deployment_id, pk__in=wanted).only("pk", "name", "prefix")
    return {token.pk: token_label(token) for token in tokens}


@dataclass(frozen=True)
class Uptime:
    label: str
    window: timedelta
    measured: timedelta  # the part of the window the deployment existed (and the rows reach back)
    up: timedelta
    approximate: bool  # the window held more events than one reading takes

    @property
    def whole(self) -> bool:
        """Whether the figure covers the whole window (not a deployment younger than it)."""
        return self.approximate or self.measured >= self.window

    @property
    def percent(self) -> float | None:
        if self.measured <= timedelta(0):
            return None
        return min(100.0, 100 * self.up / self.measured)


def _union_length(intervals: Iterable[tuple[datetime, datetime]]) -> timedelta:
    """The time covered by at least one of the intervals."""
    total = timedelta(0)
    covered_to: datetime | None = None
    for start, stop in sorted(intervals):
        if covered_to is not None and start < covered_to:
            start = covered_to
        if stop > start:
            total += stop - start
            covered_to = stop
    return total


def uptime(
    deployment: Deployment, *, now: datetime, window: timedelta, live: Sequence[ConnectorInfo], label: str = ""
) -> Uptime:
    start = max(now - window, deployment.created_at)
    if start >= now:
        return Uptime(label=label, window=window, measured=timedelta(0), up=timedelta(0), approximate=False)
    newest_first = list(
        ConnectorEvent.objects.filter(deployment=deployment, at__gte=start, at__lte=now)
        .order_by("-at", "-id")
        .values_list("kind", "connector_id", "token_id", "at")[: MAX_UPTIME_EVENTS + 1]
    )
    approximate = len(newest_first) > MAX_UPTIME_EVENTS
    rows = newest_first[:MAX_UPTIME_EVENTS][::-1]
    if approximate:
        start = rows[0][3]
    intervals: list[tuple[datetime, datetime]] = []
    opened: dict[str, tuple[datetime, int | None]] = {}
    seen: set[str] = set()
    for kind, connector_id, token_id, at in rows:
        if kind == ConnectorEventKind.CONNECTED:
            opened[connector_id] = (at, token_id)
        elif connector_id in opened:
            intervals.append((opened.pop(connector_id)[0], at))
        elif connector_id not in seen:  # connected before the window began
            intervals.append((start, at))
        seen.add(connector_id)
    live_ids = {info.connector_id[:40] for info in live}
    unended = {cid: value for cid, value in opened.items() if cid not in live_ids}
    last_seen = dict(
        ConnectorToken.objects.filter(pk__in={token_id for _, token_id in unended.values()}).values_list(
            "pk", "last_seen_at"
        )
    )
    connects: dict[int | None, list[datetime]] = {}
    for kind, _, token_id, at in rows:
        if kind == ConnectorEventKind.CONNECTED:
            connects.setdefault(token_id, []).append(at)  # in time order, as the rows
    for connector_id, (at, held_by) in opened.items():
        if connector_id in live_ids:
            intervals.append((at, now))
            continue
        ends = [now]
        heartbeat = last_seen.get(held_by) if held_by is not None else None
        if heartbeat is not None:
            ends.append(heartbeat)
        times = connects.get(held_by, [])
        following = bisect_right(times, at)
        if held_by is not None and following < len(times):
            ends.append(times[following])  # the token's next connect: it came back after a restart
        intervals.append((at, max(at, min(ends))))
    for info in live:
        if info.connector_id[:40] not in seen:  # connected before the window (or its row was pruned)
            since = datetime.fromtimestamp(info.connected_since, UTC)
            intervals.append((max(start, since), now))
    clipped = [(max(a, start), min(b, now)) for a, b in intervals]
    return Uptime(label=label, window=window, measured=now - start, up=_union_length(clipped), approximate=approximate)


def uptimes(deployment: Deployment, *, now: datetime, live: Sequence[ConnectorInfo]) -> list[Uptime]:
    """Uptime over the last 24 hours and the last 7 days."""
    return [uptime(deployment, now=now, window=window, live=live, label=label) for label, window in WINDOWS.items()]
