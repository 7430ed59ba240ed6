"""ASGI entry point: HTTP /v1 to the gateway's handler, /static/ to WhiteNoise (served here, so
Tokios works air-gapped), the rest to Django; WebSocket `/v1/connector` to the connector consumer,
once its Host (and, with TOKIOS_HTTPS, wss://) passed proxy/handler.py's check."""

import asyncio
import gc
import logging
import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tokios_site.settings")
GC_THRESHOLD = (10_000, 10, 10)  # see the end of this module

from django.core.asgi import get_asgi_application  # noqa: E402

django_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.conf import settings  # noqa: E402
from django.urls import path  # noqa: E402

from billing import limits, metering  # noqa: E402
from lib.contract import WhiteNoiseStaticFiles  # noqa: E402
from proxy import tracing  # noqa: E402
from proxy.handler import AdmittedWebSocket, GatewayHandler  # noqa: E402
from proxy.tunnel.consumer import ConnectorConsumer  # noqa: E402

# Once per process, here where the server starts rather than on import: OpenTelemetry traces when
# an OTLP endpoint is configured (proxy/tracing.py), nothing otherwise.
tracing.setup()
SHUTDOWN_DRAIN_SECONDS = 5.0
gateway_app = GatewayHandler()
static_app = WhiteNoiseStaticFiles(django_app)
static_prefix = "/" + settings.STATIC_URL.lstrip("/")


async def http_app(scope, receive, send):
    if scope["path"].startswith("/v1/"):
        return await gateway_app(scope, receive, send)
    if scope["path"].startswith(static_prefix):
        return await static_app(scope, receive, send)
    return await django_app(scope, receive, send)


async def lifespan_app(scope, receive, send):
    """uvicorn's lifespan protocol. Its shutdown, once the last connection closed, is where a graceful
    stop finishes its work: after a SIGTERM uvicorn raises the signal again and the process ends
    without running `atexit` handlers."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await shut_down()
            await send({"type": "lifespan.shutdown.complete"})
            return


async def shut_down() -> None:
    """In order: the usage events still batched (written, or logged as lost when the database is
    down), the rate-limit settlements not yet sent, and the spans still batched. Each export
    blocks (the database's, Redis's and OTEL_EXPORTER_OTLP_TIMEOUT's own timeouts bound it)."""
    await asyncio.to_thread(metering.flush_at_exit)
    try:
        await asyncio.wait_for(limits.get_limiter().drain(), SHUTDOWN_DRAIN_SECONDS)
    except Exception:
        logging.getLogger("tokios.gateway").warning(
            "could not settle rate-limit reservations at shutdown", exc_info=True
        )
    await asyncio.to_thread(tracing.shutdown)


application = ProtocolTypeRouter(
    {
        "lifespan": lifespan_app,
        "http": http_app,
        "websocket": AdmittedWebSocket(URLRouter([path("v1/connector", ConnectorConsumer.as_asgi())])),
    }
)

# Garbage collection took ~15 % of the server's CPU under load (gc.callbacks timing, c=32, the
# development machine): full passes walked everything Django loaded (~70 ms each), and the young
# generation was collected every 700 allocations, walking the in-flight requests' objects again and
# again although reference counting frees a request's objects when it ends. Everything loaded so far
# lives as long as the process, so it is frozen out of the collector's sight, and the young
# generation is collected every 10,000 allocations: ~6 % of the CPU. See docs/benchmarks.md.
gc.freeze()
gc.set_threshold(*GC_THRESHOLD)
