"""The library internals the connector relies on beyond documented API, all in this module.

Each one is here because it was measured to pay for itself; the figure and the command are written
beside it and in the server's docs/benchmarks.md ("Framework contract"). The rest of the connector
uses documented API only. tests/connector/test_contract.py checks every one against the installed
libraries and fails, naming the library and what changed, when an upgrade breaks one or goes past
the versions below. (The connector is installed on its own, so it does not share the server's
lib/contract.py.)
"""

from __future__ import annotations

# The releases this module was read against and measured on, as (major, minor).
VERIFIED = {"httpcore": {(1, 0)}}

# httpcore: an idle keep-alive connection asks its network stream `get_extra_info("is_readable")`
# whether the server closed it meanwhile (AsyncHTTP11Connection.has_expired), an info key its docs
# do not list. The lean transport's stream answers it from what its protocol already knows, with no
# system call (tokios_connector/transport.py). That transport, built on httpcore's public HTTP/1.1
# connection and network stream classes, pays for itself: with httpx's stock transport instead,
# the connector's CPU per streamed token was +28 % [+11 … +42] at 8 concurrent streams and +224 %
# [+144 … +422] at 64 (bench/connector.py run from a tree with the stock transport, --baseline this
# one; docs/benchmarks.md, "Framework contract").
IS_READABLE = "is_readable"
