"""The per-request usage record the gateway fills and billing/metering.py writes."""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass(slots=True)
class UsageRecord:
    """What one /v1 request used, filled in by the gateway as the request goes."""

    request_id: str
    surface: str
    started: float = field(default_factory=time.monotonic)
    created_at: float = field(default_factory=time.time)
    org_id: int | None = None
    key_id: int | None = None
    deployment_id: int | None = None
    status_code: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    usage_estimated: bool = False
    cost_micros: int = 0
    latency_ms: int = 0
    ttft_ms: int | None = None
    streamed: bool = False
    cancelled: bool = False
    error_code: str = ""
    requested_model: str = ""  # the `model` the client sent, whether or not a deployment has it
    connector_id: str = ""  # the connector that took the call, if one did
    queue_wait_ms: int = 0  # how long the request waited for a free slot of the model (proxy/tunnel/queue.py)
    # Sent a second time, to another connector, after the first failed before the response began;
    # served by one of the deployment's fallbacks (then `deployment_id` is the fallback's).
    retried: bool = False
    served_by_fallback: bool = False
    # The connector's own timing of the model server (from its `end` frame), for metrics and the
    # access log: what the model took, as against what Tokios added. Not stored in the usage row.
    upstream_ms: int | None = None
    upstream_ttfb_ms: int | None = None
    # When `submit` queued it (time.monotonic()), for `writer_state().oldest_age`: a long stream's
    # `started` is not when it began to wait for the database. Not stored in the usage row either.
    submitted: float = 0.0

    def first_token(self) -> None:
        if self.ttft_ms is None:
            self.ttft_ms = int((time.monotonic() - self.started) * 1000)

    def finish(self, status_code: int | None = None) -> None:
        if status_code is not None:
            self.status_code = status_code
        self.latency_ms = int((time.monotonic() - self.started) * 1000)
