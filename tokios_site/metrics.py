"""GET /metrics: the server's metrics in Prometheus's text format (lib/metrics.py), for an admin's
scraper only.

Who may scrape (tokios_site/settings.py, "Metrics"):
- `TOKIOS_METRICS_ALLOW`: admin networks; any other client address gets 403;
- `TOKIOS_METRICS_TOKEN`: `Authorization: Bearer <token>`, compared in constant time; 401 without it;
- both: both are required; neither: /metrics does not exist (404), except that with DEBUG a loopback
  client may scrape (a developer's own Prometheus).
The address is the one the server sees (REMOTE_ADDR; behind a reverse proxy, uvicorn's
`--forwarded-allow-ips` decides whether that is the proxy's or the client's).

What lives in shared state is read here, at scrape time, by `SharedState`: connectors online and
requests queued per deployment (presence and queues: Redis with several processes, this process's
memory without), and how far the usage roll-up has come (the database).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import ipaddress
import logging
import time
from collections import defaultdict
from collections.abc import Iterator

from django.conf import settings
from django.http import Http404, HttpRequest, HttpResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from billing.models import RollupWatermark, UsageEvent
from billing.rollups import WATERMARK
from deployments.models import Deployment
from lib import metrics
from proxy.tunnel import presence, queue

log = logging.getLogger("tokios.metrics")
LOOPBACK = ("127.0.0.0/8", "::1/128")


@functools.cache
def _networks(allowed: tuple[str, ...]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(network) for network in allowed)


@functools.cache
def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def _address_allowed(request: HttpRequest, allowed: tuple[str, ...]) -> bool:
    try:
        address = ipaddress.ip_address(request.META.get("REMOTE_ADDR") or "")
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in _networks(allowed))


def _token_matches(request: HttpRequest, token: str) -> bool:
    auth = request.headers.get("authorization", "")
    presented = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
    # Digests of equal length, compared in constant time: neither the token nor its length leaks.
    return bool(presented) and hmac.compare_digest(hashlib.sha256(presented.encode()).digest(), _digest(token))


def refusal(request: HttpRequest) -> HttpResponse | None:
    """Why this request may not scrape (404 off, 403 address, 401 token), or None."""
    token, allowed = settings.METRICS_TOKEN, tuple(settings.METRICS_ALLOW)
    if not token and not allowed:
        if not settings.DEBUG:
            raise Http404
        allowed = LOOPBACK
    if allowed and not _address_allowed(request, allowed):
        return HttpResponse("This address may not read the metrics.\n", status=403, content_type="text/plain")
    if token and not _token_matches(request, token):
        response = HttpResponse("Send the metrics token as a Bearer token.\n", status=401, content_type="text/plain")
        response["WWW-Authenticate"] = 'Bearer realm="tokios-metrics"'
        return response
    return None


@never_cache
@require_safe
def metrics_view(request: HttpRequest) -> HttpResponse:
    refused = refusal(request)
    if refused is not None:
        return refused
    body, headers = metrics.render(
        [SharedState()],
        accept=request.headers.get("accept", ""),
        accept_encoding=request.headers.get("accept-encoding", ""),
    )
    return HttpResponse(body, headers=headers)


class SharedState:
    """The gauges read from shared state at each scrape (sync: the view runs in a thread)."""

    def collect(self) -> Iterator[Metric]:
        yield from self._tunnel()
        yield from self._rollup()

    def _tunnel(self) -> Iterator[Metric]:
        deployments = list(Deployment.objects.order_by("id").values_list("id", "name"))
        ids = [deployment_id for deployment_id, _ in deployments]
        labels = {deployment_id: metrics.deployment_label(name) for deployment_id, name in deployments}
        online = presence.online_counts_sync(ids)
        if online is not None:
            yield self._by_deployment("tokios_connectors_online", "Connectors online, per deployment.", labels, online)
        depths = queue.depths_sync_many(ids)
        if depths is not None:
            yield self._by_deployment(
                "tokios_queued_requests", "Requests waiting for a free slot, per deployment.", labels, depths
            )

    @staticmethod
    def _by_deployment(name: str, documentation: str, labels: dict[int, str], values: dict[int, int]) -> Metric:
        """One sample per deployment label, 0 included; the deployments beyond the label cap are summed."""
        sums: dict[str, int] = defaultdict(int)
        for deployment_id, label in labels.items():
            sums[label] += values.get(deployment_id, 0)
        family = GaugeMetricFamily(name, documentation, labels=["deployment"])
        for label, value in sums.items():
            family.add_metric([label], value)
        return family

    @staticmethod
    def _rollup() -> Iterator[Metric]:
        watermark = RollupWatermark.objects.filter(name=WATERMARK).values_list("updated_at", "last_event_id").first()
        if watermark is None:  # the roll-up never ran
            return
        updated_at, last_event_id = watermark
        now = time.time()
        yield GaugeMetricFamily(
            "tokios_rollup_watermark_age_seconds",
            "Seconds since the usage roll-up last ran.",
            value=max(0.0, now - updated_at.timestamp()),
        )
        oldest = (
            UsageEvent.objects.filter(id__gt=last_event_id).order_by("id").values_list("created_at", flat=True).first()
        )
        yield GaugeMetricFamily(
            "tokios_rollup_pending_age_seconds",
            "Age of the oldest usage event the roll-up has not read yet (0: none waits).",
            value=0.0 if oldest is None else max(0.0, now - oldest.timestamp()),
        )
