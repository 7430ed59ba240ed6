"""The server's Prometheus metrics: every definition, the registry they live in, and the scrape.

Two modes, as prometheus_client decides them when it is first imported:

- one process (the embedded server, or one uvicorn worker): the metrics live in this process's
  `REGISTRY` and a scrape reads them from memory;
- several worker processes: with `PROMETHEUS_MULTIPROC_DIR` set in their environment, every process
  writes its values to files of its own in that directory, and a scrape, whichever worker answers
  it, adds up the files of all of them (`render`). Gauges say how: `livesum` for what is in flight
  now (a dead worker's share is dropped), `livemax` for ages. The directory must be empty when the
  server starts and belongs to one server; files of workers that died stay (their counters still
  count) except the live gauges', which `render` removes.

What other layers own (connectors online, queued requests, the roll-up's progress) is read at
scrape time by collectors that those layers' code builds and hands to `render` explicitly; nothing
here imports an app.

Cardinality: the only label taken from tenants' data is `deployment` (a deployment's name, which
Tokios validates: lower-case letters, digits, '.', '-' and '_', at most 64 characters). A process
gives its own label to the first `settings.METRICS_MAX_DEPLOYMENTS` names it sees and `other` to
every further one (`DeploymentLabels`). No key, secret, prompt or free text ever becomes a label.
"""

from __future__ import annotations

import gzip
import os
import re
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

from django.conf import settings
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.exposition import choose_encoder, gzip_accepted
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector

# prometheus_client chooses its mode from this variable when it is imported (before any metric
# exists), so this module reads the same variable the same way rather than a Django setting.
MULTIPROCESS_DIR = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")

OTHER = "other"  # the label of every deployment beyond the cap
NONE = "none"  # a request that never named a deployment (or a surface)

REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)  # CPU, memory and file descriptors of this process (one-process mode)

# Seconds. Requests to a model last from milliseconds (a refusal) to many minutes (a long answer).
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
# What the gateway adds is meant to stay in the low milliseconds.
ADDED_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
QUEUE_BUCKETS = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

# --- per request (proxy/request_metrics.py) -----------------------------------------------------------

REQUESTS = Counter(
    "tokios_requests",
    "Finished /v1 requests, by surface, deployment and HTTP status (499: the client left first).",
    ["surface", "deployment", "status"],
    registry=REGISTRY,
)
TOKENS = Counter(
    "tokios_tokens",
    "Tokens of finished /v1 requests, as metered (the model's count, or Tokios's estimate).",
    ["surface", "deployment", "direction"],
    registry=REGISTRY,
)
LIMIT_REFUSALS = Counter(
    "tokios_limit_refusals",
    "Requests refused by a limit: rate_limit (requests or tokens per minute), budget (monthly spend), "
    "queue_full / queue_timeout (every slot of the model busy), concurrency (the connector's own limit).",
    ["kind", "deployment"],
    registry=REGISTRY,
)
IN_FLIGHT = Gauge(
    "tokios_requests_in_flight",
    "/v1 requests being handled now.",
    registry=REGISTRY,
    multiprocess_mode="livesum",
)
REQUEST_DURATION = Histogram(
    "tokios_request_duration_seconds",
    "Time from reading a /v1 request to its end, every request.",
    ["surface"],
    buckets=REQUEST_BUCKETS,
    registry=REGISTRY,
)
UPSTREAM_DURATION = Histogram(
    "tokios_upstream_duration_seconds",
    "The model server's time for a request, as its connector measured it (requests the model answered).",
    ["surface"],
    buckets=REQUEST_BUCKETS,
    registry=REGISTRY,
)
GATEWAY_DURATION = Histogram(
    "tokios_gateway_added_seconds",
    "Time Tokios added to a request the model answered: its duration less the model server's, "
    "including any wait for a free slot.",
    ["surface"],
    buckets=ADDED_BUCKETS,
    registry=REGISTRY,
)
TTFT = Histogram(
    "tokios_time_to_first_token_seconds",
    "Time from reading a request to the first token sent to its client.",
    ["surface"],
    buckets=TTFT_BUCKETS,
    registry=REGISTRY,
)
UPSTREAM_TTFB = Histogram(
    "tokios_upstream_first_byte_seconds",
    "Time the model server took to its first byte, as the connector measured it.",
    ["surface"],
    buckets=TTFT_BUCKETS,
    registry=REGISTRY,
)
GATEWAY_TTFT = Histogram(
    "tokios_gateway_added_first_token_seconds",
    "Time Tokios added before the first token: time to first token less the model server's first byte.",
    ["surface"],
    buckets=ADDED_BUCKETS,
    registry=REGISTRY,
)
QUEUE_WAIT = Histogram(
    "tokios_queue_wait_seconds",
    "Time a request waited for a free slot of its model, for the requests that had to wait.",
    buckets=QUEUE_BUCKETS,
    registry=REGISTRY,
)

# --- the usage writer (per process: each has its own queue) ----------------------------------------

WRITER_QUEUED = Gauge(
    "tokios_usage_writer_queued_records",
    "Usage records waiting to be written to the database (queued, or in the batch being written).",
    registry=REGISTRY,
    multiprocess_mode="livesum",
)
WRITER_OLDEST_AGE = Gauge(
    "tokios_usage_writer_oldest_queued_age_seconds",
    "Age of the oldest usage record waiting to be written (0: none waits).",
    registry=REGISTRY,
    multiprocess_mode="livemax",
)
WRITER_FAILING = Gauge(
    "tokios_usage_writer_failing_seconds",
    "How long the usage writer's batch writes have been failing (0: the last one succeeded).",
    registry=REGISTRY,
    multiprocess_mode="livemax",
)
WRITER_BATCH_FAILURES = Counter(
    "tokios_usage_writer_batch_failures",
    "Batch writes of usage records that failed (their records are kept and written again).",
    registry=REGISTRY,
)

# --- the tunnel (proxy/tunnel/) ------------------------------------------------------------------------

# Frame kinds, a fixed set: the protocol's frame types, `chunk` for binary body chunks, and
# `invalid` for a frame that broke the protocol. Anything else is counted as `invalid`.
FRAMES_IN = ("hello", "response.start", "response.end", "response.error", "pong", "draining", "slots", "chunk")
FRAMES_OUT = ("welcome", "request", "request.body", "cancel", "credit", "ping")
INVALID_FRAME = "invalid"
TUNNEL_FRAMES = Counter(
    "tokios_tunnel_frames",
    "WebSocket frames between Tokios and its connectors, by direction and frame kind.",
    ["direction", "kind"],
    registry=REGISTRY,
)
TUNNEL_BYTES = Counter(
    "tokios_tunnel_bytes",
    "Bytes of WebSocket frame payload between Tokios and its connectors, by direction and frame kind.",
    ["direction", "kind"],
    registry=REGISTRY,
)


class FrameCounter:
    """The frame and byte counters of one direction, one labelled child per kind made up front:
    the tunnel counts thousands of frames a second."""

    def __init__(self, direction: str, kinds: Iterable[str]) -> None:
        kinds = (*kinds, INVALID_FRAME)
        self.frames = {kind: TUNNEL_FRAMES.labels(direction, kind) for kind in kinds}
        self.bytes = {kind: TUNNEL_BYTES.labels(direction, kind) for kind in kinds}

    def count(self, kind: str, size: int) -> None:
        frames = self.frames.get(kind)
        if frames is None:
            kind = INVALID_FRAME
            frames = self.frames[kind]
        frames.inc()
        self.bytes[kind].inc(size)

    def count_text(self, kind: str, text: str) -> None:
        """A text frame: its size in UTF-8 (isascii is O(1) for str; only a non-ASCII one is encoded)."""
        self.count(kind, len(text) if text.isascii() else len(text.encode()))


FRAMES_FROM_CONNECTORS = FrameCounter("in", FRAMES_IN)
FRAMES_TO_CONNECTORS = FrameCounter("out", FRAMES_OUT)


# --- label cardinality --------------------------------------------------------------------------------------


class DeploymentLabels:
    """Deployment name → label value, with at most `limit` distinct values per process (the first
    names seen); every further name is `other`. `limit` None: `settings.METRICS_MAX_DEPLOYMENTS`."""

    def __init__(self, limit: int | None = None) -> None:
        self.limit = limit
        self.known: dict[str, str] = {}
        self.lock = threading.Lock()  # the scrape's collectors label from another thread

    def __call__(self, name: str) -> str:
        label = self.known.get(name)
        if label is not None:
            return label
        with self.lock:
            limit = settings.METRICS_MAX_DEPLOYMENTS if self.limit is None else self.limit
            if len(self.known) >= limit:
                return OTHER
            label = self.known[name] = name or NONE
            return label


deployment_label = DeploymentLabels()


# --- the scrape ---------------------------------------------------------------------------------------------


class Combined:
    """Several collectors read as one, for one scrape."""

    def __init__(self, collectors: Iterable[Collector]) -> None:
        self.collectors = list(collectors)

    def collect(self) -> Iterator[Metric]:
        for collector in self.collectors:
            yield from collector.collect()


_LIVE_FILE = re.compile(r"^gauge_live[a-z]+_(\d+)\.db$")


def forget_dead_processes(directory: str) -> list[int]:
    """Remove the live gauges' files of worker processes that are gone (uvicorn has no hook that
    would say so), so that their in-flight requests and queues stop counting. Returns their pids.
    The directory belongs to one server on this machine, so a pid can be checked here."""
    dead = set()
    for path in Path(directory).iterdir():
        match = _LIVE_FILE.match(path.name)
        if match is None:
            continue
        pid = int(match.group(1))
        if pid in dead or pid == os.getpid():
            continue
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            dead.add(pid)
        except PermissionError:  # alive, someone else's
            continue
    for pid in dead:
        mark_process_dead(pid, directory)
    return sorted(dead)


def collect(extra: Iterable[Collector] = (), *, multiprocess_dir: str | None = None) -> Combined:
    """Everything a scrape shows: this process's metrics, or (multiprocess mode) every worker's,
    and the `extra` collectors of the layers that read shared state at scrape time."""
    directory = MULTIPROCESS_DIR if multiprocess_dir is None else multiprocess_dir
    if directory:
        forget_dead_processes(directory)
        own: Collector = MultiProcessCollector(None, path=directory)
    else:
        own = REGISTRY
    return Combined([own, *extra])


def render(
    extra: Iterable[Collector] = (),
    *,
    accept: str = "",
    accept_encoding: str = "",
    multiprocess_dir: str | None = None,
) -> tuple[bytes, dict[str, str]]:
    """The exposition body and its headers (content type, and gzip when the scraper takes it)."""
    encoder, content_type = choose_encoder(accept)
    body = encoder(collect(extra, multiprocess_dir=multiprocess_dir))
    headers = {"Content-Type": content_type}
    if gzip_accepted(accept_encoding):
        body = gzip.compress(body, compresslevel=5)
        headers["Content-Encoding"] = "gzip"
    return body, headers
