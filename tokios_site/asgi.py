"""ASGI entry point: HTTP to Django (static files served here, so Tokios works air-gapped),
WebSocket `/v1/connector` to the connector consumer."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tokios_site.settings")

from django.core.asgi import get_asgi_application  # noqa: E402

django_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.conf import settings  # noqa: E402
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler  # noqa: E402
from django.urls import path  # noqa: E402

from proxy.handler import GatewayHandler  # noqa: E402
from proxy.tunnel.consumer import ConnectorConsumer  # noqa: E402

gateway_app = GatewayHandler()
static_app = ASGIStaticFilesHandler(django_app)
static_prefix = "/" + settings.STATIC_URL.lstrip("/")


async def http_app(scope, receive, send):
    if scope["path"].startswith("/v1/"):
        return await gateway_app(scope, receive, send)
    if scope["path"].startswith(static_prefix):
        return await static_app(scope, receive, send)
    return await django_app(scope, receive, send)


application = ProtocolTypeRouter(
    {
        "http": http_app,
        "websocket": URLRouter([path("v1/connector", ConnectorConsumer.as_asgi())]),
    }
)
