"""The history of connector connects and disconnects, from the tunnel's signals (proxy/tunnel/signals.py).

Written on connect and disconnect only, never on a /v1 request. A connector whose server process
dies leaves no "disconnected" row; connector-down reads the tokens' last heartbeat, flapping counts
connects, and the uptime (alerts/connector_history.py) ends such a connection at the token's last
heartbeat."""

from __future__ import annotations

import logging
from typing import Any

from django.db import IntegrityError, transaction

from proxy.tunnel.presence import ConnectorInfo
from proxy.tunnel.signals import connector_connected, connector_disconnected

from .models import ConnectorEvent, ConnectorEventKind

log = logging.getLogger("tokios.alerts")


def _record(info: ConnectorInfo, **fields: Any) -> None:
    # The token, then the deployment, may have been deleted while the connector was on: the row is
    # kept without the token, and not written at all without the deployment.
    for token_id in (info.token_id, None):
        try:
            with transaction.atomic():  # a savepoint: a refused row must not break a caller's transaction
                ConnectorEvent.objects.create(
                    deployment_id=info.deployment_id, token_id=token_id, connector_id=info.connector_id[:40], **fields
                )
            return
        except IntegrityError:
            continue
    log.info("connector %s: its deployment is gone, its %s is not recorded", info.connector_id, fields["kind"])


def record_connect(sender: Any, info: ConnectorInfo, **kwargs: Any) -> None:
    _record(info, kind=ConnectorEventKind.CONNECTED)


def record_disconnect(
    sender: Any, info: ConnectorInfo, reason: str = "", close_code: int | None = None, **kwargs: Any
) -> None:
    code = close_code if isinstance(close_code, int) and 0 <= close_code <= 65535 else None
    _record(info, kind=ConnectorEventKind.DISCONNECTED, reason=reason[:64], close_code=code)


def listen() -> None:
    """Connect the receivers above; `AlertsConfig.ready()` calls this once the models are loaded."""
    connector_connected.connect(record_connect, dispatch_uid="alerts.receivers.record_connect")
    connector_disconnected.connect(record_disconnect, dispatch_uid="alerts.receivers.record_disconnect")
