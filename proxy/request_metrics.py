"""The Prometheus metrics of each /v1 request (definitions: lib/metrics.py).

`request_started` and `request_finished` run once per request (proxy/observe.py, from the request's
scope), on the hot path: the labelled children each request touches are looked up in dicts kept
here, not through `.labels()` (a third of the cost). The usage writer's gauges are refreshed by a
small task while the writer has records waiting (`_watch_writer`): every worker process has its own
writer, so with several workers only each process can say how its writer is doing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client import Counter, Histogram

from billing import metering
from lib import metrics
from lib.redis import report_outage

if TYPE_CHECKING:
    from .gateway import RequestScope

log = logging.getLogger("tokios.metrics")

# The record's error code → the kind of limit that refused it (billing/limits, proxy/tunnel/router.py).
REFUSALS = {
    "rate_limit_exceeded": "rate_limit",  # requests or tokens per minute, of the key or its org
    "insufficient_quota": "budget",  # the key's or org's monthly budget
    "queue_full": "queue_full",  # every slot of the model busy, and its line full
    "queue_timeout": "queue_timeout",  # every slot stayed busy for as long as a request may wait
    "overloaded": "concurrency",  # the connector's own --max-concurrency
}
WRITER_REFRESH = 1.0  # seconds between two readings of the usage writer while it has work


@dataclass(slots=True)
class _Series:
    """The children one (surface, deployment, status) touches."""

    requests: Counter
    input_tokens: Counter
    output_tokens: Counter
    refused: Counter | None


@dataclass(slots=True)
class _Timings:
    """The histograms' children of one surface."""

    total: Histogram
    upstream: Histogram
    added: Histogram
    ttft: Histogram
    upstream_ttfb: Histogram
    added_ttft: Histogram


_series: dict[tuple[str, str, int, str], _Series] = {}
_timings: dict[str, _Timings] = {}


def _new_series(surface: str, deployment: str, status: int, error_code: str) -> _Series:
    refusal = REFUSALS.get(error_code)
    return _Series(
        requests=metrics.REQUESTS.labels(surface, deployment, str(status) if status else "unknown"),
        input_tokens=metrics.TOKENS.labels(surface, deployment, "input"),
        output_tokens=metrics.TOKENS.labels(surface, deployment, "output"),
        refused=metrics.LIMIT_REFUSALS.labels(refusal, deployment) if refusal else None,
    )


def _new_timings(surface: str) -> _Timings:
    return _Timings(
        total=metrics.REQUEST_DURATION.labels(surface),
        upstream=metrics.UPSTREAM_DURATION.labels(surface),
        added=metrics.GATEWAY_DURATION.labels(surface),
        ttft=metrics.TTFT.labels(surface),
        upstream_ttfb=metrics.UPSTREAM_TTFB.labels(surface),
        added_ttft=metrics.GATEWAY_TTFT.labels(surface),
    )


def request_started(scope: RequestScope) -> None:
    metrics.IN_FLIGHT.inc()


def request_finished(scope: RequestScope) -> None:
    try:
        metrics.IN_FLIGHT.dec()
        _count(scope)
        _mind_writer()
    except Exception as exc:  # metrics must never fail a request's end
        report_outage(log, "could not update the request metrics", exc, every=60.0)


def _count(scope: RequestScope) -> None:
    record = scope.record
    surface = scope.surface or metrics.NONE
    deployment = scope.deployment
    name = metrics.deployment_label(deployment.name) if deployment is not None else metrics.NONE
    # Only refusals need the error code in the key: other codes share their series.
    code = record.error_code if record.error_code in REFUSALS else ""
    key = (surface, name, record.status_code, code)
    series = _series.get(key)
    if series is None:
        series = _series[key] = _new_series(surface, name, record.status_code, code)
    series.requests.inc()
    if record.input_tokens:
        series.input_tokens.inc(record.input_tokens)
    if record.output_tokens:
        series.output_tokens.inc(record.output_tokens)
    if series.refused is not None:
        series.refused.inc()
    if not scope.metered:  # no surface took it (an unknown path, a refusal before the key): no timings
        return
    timings = _timings.get(surface)
    if timings is None:
        timings = _timings[surface] = _new_timings(surface)
    latency = record.latency_ms
    timings.total.observe(latency / 1000)
    upstream = record.upstream_ms
    if upstream is not None:
        timings.upstream.observe(upstream / 1000)
        timings.added.observe(max(0, latency - upstream) / 1000)
    ttft = record.ttft_ms
    if ttft is not None:
        timings.ttft.observe(ttft / 1000)
        ttfb = record.upstream_ttfb_ms
        if ttfb is not None:
            timings.upstream_ttfb.observe(ttfb / 1000)
            timings.added_ttft.observe(max(0, ttft - ttfb) / 1000)
    if record.queue_wait_ms:  # it waited for a free slot (most take one at once: requests_total counts them)
        metrics.QUEUE_WAIT.observe(record.queue_wait_ms / 1000)


# --- the usage writer's gauges -------------------------------------------------------------------------


class _Writer:
    task: asyncio.Task | None = None
    failures_seen = 0  # metering's count of failed batches when last read
    last: metering.WriterState | None = None  # what the gauges show


def _mind_writer() -> None:
    """Keep the writer's gauges current while it has work: a request just handed it a record."""
    task = _Writer.task
    if task is not None and not task.done() and task.get_loop() is asyncio.get_running_loop():
        return
    if publish_writer_state(metering.writer_state()):
        _Writer.task = asyncio.get_running_loop().create_task(_watch_writer())


def publish_writer_state(state: metering.WriterState) -> bool:
    """Set the gauges; True while the writer has work (records waiting, or failing)."""
    failing = state.failing_since is not None
    if state == _Writer.last:  # idle, as it was (metering off, say): nothing to write
        return bool(state.queued) or failing
    _Writer.last = state
    metrics.WRITER_QUEUED.set(state.queued)
    metrics.WRITER_OLDEST_AGE.set(state.oldest_age)
    metrics.WRITER_FAILING.set(max(0.0, time.time() - state.failing_since) if state.failing_since is not None else 0)
    if state.batch_failures > _Writer.failures_seen:
        metrics.WRITER_BATCH_FAILURES.inc(state.batch_failures - _Writer.failures_seen)
    _Writer.failures_seen = max(_Writer.failures_seen, state.batch_failures)
    return bool(state.queued) or failing


async def _watch_writer() -> None:
    while True:
        await asyncio.sleep(WRITER_REFRESH)
        if not publish_writer_state(metering.writer_state()):
            return
