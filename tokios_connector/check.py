"""``--check``: is everything in place? Ask the model server what it speaks and serves, then show
the server the token and wait for its `welcome`; serve nothing, and say what is wrong if anything.

Exit status 0 when the model server answered and the server accepted the token, 1 otherwise.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from typing import TextIO

import httpx
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from . import __version__, probe, slots
from .config import Config, public_url
from .protocol import (
    CLOSE_AUTH_REJECTED,
    CLOSE_TOKEN_REVOKED,
    CLOSE_VERSION_MISMATCH,
    MAX_FRAME_SIZE,
    Hello,
    ProtocolError,
    Welcome,
    decode_from_server,
    encode,
)
from .transport import make_transport

Say = Callable[[str], None]

EXIT_OK = 0
EXIT_PROBLEM = 1
WELCOME_TIMEOUT = 10.0

CLOSE_MEANINGS = {
    CLOSE_AUTH_REJECTED: "the server does not know this connector token (close 4001)",
    CLOSE_TOKEN_REVOKED: "the connector token was revoked (close 4003)",
    CLOSE_VERSION_MISMATCH: "the server speaks another connector protocol version (close 4004)",
}


async def run_check(config: Config, out: TextIO = sys.stdout) -> int:
    def say(line: str) -> None:
        print(line, file=out, flush=True)

    async with httpx.AsyncClient(
        transport=make_transport(config.upstream, max_connections=32),
        timeout=httpx.Timeout(config.connect_timeout),
        follow_redirects=False,
        trust_env=False,
        headers={"accept-encoding": "identity"},
    ) as http:
        findings, slot_count = await asyncio.gather(
            probe.probe(http, config.upstream, config.upstream_key), slots.count(http, config)
        )
    upstream_ok = upstream_report(config, findings, slot_count, say)
    server_ok = await server_report(config, probe.hello(config, slot_count, findings), say)
    ok = upstream_ok and server_ok
    say("all good: the connector can serve" if ok else "not ready: see above")
    return EXIT_OK if ok else EXIT_PROBLEM


def upstream_report(config: Config, findings: probe.Findings, slot_count: int, say: Say) -> bool:
    where = public_url(config.upstream)
    if not findings.answered:
        say(f"upstream {where}: no answer (is the model server running? check --upstream)")
        return False
    say(f"upstream {where}: {findings.server or 'answers'}")
    if findings.surfaces is None:
        status = findings.control_status
        hint = " (it wants a key: check --upstream-key)" if status in (401, 403) else ""
        say(f"  speaks: could not tell{hint}; the server will translate every surface to chat completions")
    else:
        say(f"  speaks natively: {', '.join(findings.surfaces) or 'none of ' + ', '.join(probe.SURFACE_PATHS)}")
    if findings.models is None:
        say("  models: not listed")
    else:
        shown = ", ".join(findings.models[:20]) + (", ..." if len(findings.models) > 20 else "")
        dropped = f" ({findings.models_dropped} left out)" if findings.models_dropped else ""
        say(f"  models ({len(findings.models)}){dropped}: {shown or 'none'}")
    say(f"  slots: {slot_count}")
    return True


async def server_report(config: Config, hello: Hello, say: Say) -> bool:
    """Connect, send `hello`, and say whether the server welcomed this connector."""
    where = public_url(config.server_url)
    try:
        async with connect(
            config.server_url,
            additional_headers={"Authorization": f"Bearer {config.token}"},
            user_agent_header=f"tokios-connector/{__version__}",
            max_size=MAX_FRAME_SIZE,
            ping_interval=None,
            compression=None,
            open_timeout=config.connect_timeout,
            close_timeout=2,
        ) as ws:
            try:
                await ws.send(encode(hello))
                raw = await asyncio.wait_for(ws.recv(), WELCOME_TIMEOUT)
            except ConnectionClosed as exc:
                code = exc.rcvd.code if exc.rcvd else 1006
                meaning = CLOSE_MEANINGS.get(code, f"the server closed the connection (close {code})")
                reason = f" (server said: {exc.rcvd.reason!r})" if exc.rcvd and exc.rcvd.reason else ""
                say(f"server {where}: {meaning}{reason}")
                return False
            try:
                frame = decode_from_server(raw) if isinstance(raw, str) else None
            except ProtocolError as exc:
                say(f"server {where}: its first frame is not a welcome ({exc.message})")
                return False
            if not isinstance(frame, Welcome):
                say(f"server {where}: its first frame is not a welcome")
                return False
            await ws.close(1000, "check done")
    except InvalidStatus as exc:
        status = exc.response.status_code
        hint = ": check the token and --server" if status in (401, 403) else ": is --server right?"
        say(f"server {where}: refused the connection (HTTP {status}){hint}")
        return False
    except (TimeoutError, asyncio.TimeoutError):  # noqa: UP041 - distinct classes on Python 3.10
        say(f"server {where}: no answer in time")
        return False
    except (OSError, InvalidHandshake) as exc:
        say(f"server {where}: cannot connect ({exc or type(exc).__name__})")
        return False
    say(f"server {where}: accepts the token (connector {frame.connector_id}, deployment {str(frame.deployment)[:100]})")
    return True
