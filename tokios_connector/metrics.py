"""The connector's own Prometheus metrics, served on `--metrics-port` (bound to `--metrics-host`,
127.0.0.1 by default) at any path, e.g. http://127.0.0.1:9464/metrics.

prometheus-client is an optional extra (`pip install 'tokios-connector[metrics]'`): without it the
connector runs as before, with `NO_METRICS`, and only `--metrics-port` refuses to start. The
server runs in a thread of its own (prometheus_client's), so a busy event loop does not delay a
scrape and a scrape costs the loop nothing.

Every label comes from a fixed set: frame kinds, outcomes, and HTTP statuses 100-599 (anything else
the model server says is `other`). Nothing from a request's body or path becomes a label.
"""

from __future__ import annotations

try:  # the optional extra
    import prometheus_client
except ImportError:  # pragma: no cover - exercised where the extra is not installed
    prometheus_client = None  # type: ignore[assignment]

INSTALL_HINT = "pip install 'tokios-connector[metrics]' (or pip install prometheus-client)"

# Frame kinds, by direction; `chunk` is a binary body chunk, `invalid` a frame that broke the protocol.
FRAMES_IN = ("welcome", "request", "request.body", "cancel", "credit", "ping", "invalid")
FRAMES_OUT = ("hello", "response.start", "response.end", "response.error", "pong", "draining", "slots", "chunk")
# What became of a request: `ok`, the error codes sent to the server, or why nothing was sent.
OUTCOMES = (
    "ok",
    "cancelled",
    "tunnel closed",
    "upstream_timeout",
    "upstream_unreachable",
    "upstream_error",
    "path_not_allowed",
    "overloaded",
    "bad_request",
)
DURATION_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
FIRST_BYTE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


def available() -> bool:
    return prometheus_client is not None


class NoMetrics:
    """What the connector counts with when metrics are off: nothing, at the cost of a call."""

    def frame_in(self, kind: str, size: int) -> None:
        pass

    def frame_out(self, kind: str, size: int) -> None:
        pass

    def text_in(self, kind: str, text: str) -> None:
        pass

    def text_out(self, kind: str, text: str) -> None:
        pass

    def connected(self, up: bool) -> None:
        pass

    def reconnecting(self) -> None:
        pass

    def request_started(self) -> None:
        pass

    def request_finished(self, status: int | None, outcome: str, seconds: float, first_byte: float | None) -> None:
        pass

    def refused(self, code: str) -> None:
        pass


NO_METRICS = NoMetrics()


class ConnectorMetrics(NoMetrics):
    """The connector's metrics, in a registry of their own (with this process's CPU and memory)."""

    def __init__(self) -> None:
        if prometheus_client is None:
            raise RuntimeError(f"metrics need the prometheus-client package: {INSTALL_HINT}")
        pc = prometheus_client
        self.registry = registry = pc.CollectorRegistry(auto_describe=True)
        pc.ProcessCollector(registry=registry)
        frames = pc.Counter(
            "tokios_connector_frames", "Tunnel frames, by direction and kind.", ["direction", "kind"], registry=registry
        )
        sizes = pc.Counter(
            "tokios_connector_frame_bytes",
            "Bytes of tunnel frame payload, by direction and kind.",
            ["direction", "kind"],
            registry=registry,
        )
        self.frames_in = {kind: (frames.labels("in", kind), sizes.labels("in", kind)) for kind in FRAMES_IN}
        self.frames_out = {kind: (frames.labels("out", kind), sizes.labels("out", kind)) for kind in FRAMES_OUT}
        self.up = pc.Gauge("tokios_connector_connected", "1 while connected to the Tokios server.", registry=registry)
        self.reconnects = pc.Counter(
            "tokios_connector_reconnects", "Times the connection to the server was dialled again.", registry=registry
        )
        self.in_flight = pc.Gauge(
            "tokios_connector_requests_in_flight", "Requests being sent to the model server now.", registry=registry
        )
        self.requests = pc.Counter(
            "tokios_connector_requests",
            "Requests from the server, by the model server's HTTP status (`none`: it gave none) and outcome.",
            ["status", "outcome"],
            registry=registry,
        )
        self.duration = pc.Histogram(
            "tokios_connector_upstream_duration_seconds",
            "Time the model server took for a request, to its last byte.",
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.first_byte = pc.Histogram(
            "tokios_connector_upstream_first_byte_seconds",
            "Time the model server took to the first byte of its body.",
            buckets=FIRST_BYTE_BUCKETS,
            registry=registry,
        )
        self.outcomes: dict[tuple[str, str], prometheus_client.Counter] = {}  # labelled children, made once
        self.statuses = {code: str(code) for code in range(100, 600)}

    def serve(self, host: str, port: int) -> None:
        """Serve the metrics on host:port from a thread (OSError if the port cannot be bound)."""
        assert prometheus_client is not None
        prometheus_client.start_http_server(port, addr=host, registry=self.registry)

    def frame_in(self, kind: str, size: int) -> None:
        counters = self.frames_in.get(kind) or self.frames_in["invalid"]
        counters[0].inc()
        counters[1].inc(size)

    def frame_out(self, kind: str, size: int) -> None:
        counters = self.frames_out[kind]
        counters[0].inc()
        counters[1].inc(size)

    def text_in(self, kind: str, text: str) -> None:
        self.frame_in(kind, len(text) if text.isascii() else len(text.encode()))  # UTF-8 bytes

    def text_out(self, kind: str, text: str) -> None:
        self.frame_out(kind, len(text) if text.isascii() else len(text.encode()))

    def connected(self, up: bool) -> None:
        self.up.set(1 if up else 0)

    def reconnecting(self) -> None:
        self.reconnects.inc()

    def request_started(self) -> None:
        self.in_flight.inc()

    def request_finished(self, status: int | None, outcome: str, seconds: float, first_byte: float | None) -> None:
        self.in_flight.dec()
        self._count(status, outcome)
        if outcome == "ok":
            self.duration.observe(seconds)
        if first_byte is not None:
            self.first_byte.observe(first_byte)

    def refused(self, code: str) -> None:
        self._count(None, code)

    def _count(self, status: int | None, outcome: str) -> None:
        label = "none" if status is None else self.statuses.get(status, "other")
        child = self.outcomes.get((label, outcome))
        if child is None:
            if outcome not in OUTCOMES:
                outcome = "upstream_error"
            child = self.outcomes[(label, outcome)] = self.requests.labels(label, outcome)
        child.inc()


def serve(host: str, port: int) -> ConnectorMetrics:
    """The connector's metrics, served on host:port (OSError if that cannot be bound)."""
    metrics = ConnectorMetrics()
    metrics.serve(host, port)
    return metrics
