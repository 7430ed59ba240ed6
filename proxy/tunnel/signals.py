"""Signals the tunnel sends to the layers above it, which it never imports. Both are sent with
`asend_robust` from the connector's consumer, on connect and disconnect only (never on a request),
and a receiver's failure is logged by Django without reaching the connector."""

from django.dispatch import Signal

# Sent with `info` (the presence.ConnectorInfo) once a connector is welcomed and published.
connector_connected = Signal()
# Sent with `info`, `reason` and `close_code` (the WebSocket close code: the server's when it closed
# the connection, else the connector's; None when the server process stopped it) once a welcomed
# connector is out of service, however it ended.
connector_disconnected = Signal()
