"""The history of connector connects and disconnects, from the tunnel's signals (proxy/tunnel/signals.py).

Written on connect and disconnect only, never on a /v1 request. A connector whose process dies
leaves no "disconnected" row; nothing here depends on one (connector-down reads the tokens' last
heartbeat, flapping counts connects)."""

from __future__ import annotations

from typing import Any

from proxy.tunnel.presence import ConnectorInfo
from proxy.tunnel.signals import connector_connected, connector_disconnected

from .models import ConnectorEvent, ConnectorEventKind


def record_connect(sender: Any, info: ConnectorInfo, **kwargs: Any) -> None:
    ConnectorEvent.objects.create(
        deployment_id=info.deployment_id, kind=ConnectorEventKind.CONNECTED, connector_id=info.connector_id[:40]
    )


def record_disconnect(sender: Any, info: ConnectorInfo, reason: str = "", **kwargs: Any) -> None:
    ConnectorEvent.objects.create(
        deployment_id=info.deployment_id,
        kind=ConnectorEventKind.DISCONNECTED,
        connector_id=info.connector_id[:40],
        reason=reason[:64],
    )


def listen() -> None:
    """Connect the receivers above; `AlertsConfig.ready()` calls this once the models are loaded."""
    connector_connected.connect(record_connect, dispatch_uid="alerts.receivers.record_connect")
    connector_disconnected.connect(record_disconnect, dispatch_uid="alerts.receivers.record_disconnect")
