"""Tokios connector: carries requests from a Tokios server to a local OpenAI-compatible model.

It dials out over one WebSocket (see ``docs/connector-protocol.md``) so the model owner needs no
inbound port. Standalone on purpose: it depends on ``websockets`` and ``httpx`` only (``orjson``
and ``uvloop`` are used when installed) and never imports Django. The protocol's frames and
version live in ``tokios_connector.protocol``, which the server imports too.
"""

from __future__ import annotations

__version__ = "0.1.0"
