"""Driving a Chat Completions model for a surface that speaks another format (Messages, Responses).

The model is always asked to stream (with usage), whatever the client asked: its events feed the
surface's translator through the one stream loop (`proxy/stream.py`), which either streams the
surface's events to the client or lets the translator build the final object. That one path gives
exact stop-sequence detection, time to first token, and partial usage on cancel.
"""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpResponseBase

from ..errors import GatewayError, json_response
from ..gateway import RequestScope
from ..stream import EventTranslator, relay, stream_response
from ..upstream import open_call, read_body, upstream_error

OMITTED_TOOLS_HEADER = "x-tokios-omitted-tools"
MAX_OMITTED_TOOLS_HEADER = 256  # characters: whole names only, the rest left out


def omit_tools(scope: RequestScope, types: tuple[str, ...]) -> None:
    """Name the tool types the model was asked without (hosted and server tools, tools without a schema)
    in the response's `x-tokios-omitted-tools` header: comma-separated, at most 256 characters, whole
    names only; no header when there are none."""
    shown = ""
    for kind in types:
        joined = f"{shown},{kind}" if shown else kind
        if len(joined) > MAX_OMITTED_TOOLS_HEADER:
            break
        shown = joined
    if shown:
        scope.headers[OMITTED_TOOLS_HEADER] = shown


async def run(
    scope: RequestScope, chat_body: dict, translator: EventTranslator, *, stream: bool, final: Callable[[], dict]
) -> HttpResponseBase:
    if stream:
        return await stream_response(scope, "/chat/completions", chat_body, translator)
    call, status = await open_call(scope, "/chat/completions", chat_body)
    if status != 200:
        raise upstream_error(scope, status, await read_body(scope, call))
    scope.usage_source = translator
    async for _ in relay(scope, call, translator, emit=False):
        pass
    if translator.failed:
        # The model's output carried an error: the same answer as a Chat Completions request
        # failing the same way.
        scope.record.error_code = "upstream_error"
        message = translator.inner.error_message or "The model server failed."
        raise GatewayError(502, message, code="upstream_error", headers={"x-should-retry": "false"})
    return json_response(final())
