"""Signals deployments sends to the layers above it, which it never imports."""

from django.dispatch import Signal

# Sent once a connector token's revocation is committed, with `token_id`. The tunnel (proxy)
# disconnects the connectors that hold it.
connector_token_revoked = Signal()
