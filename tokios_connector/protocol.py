"""The connector protocol (docs/connector-protocol.md), version 2: typed frames for both ends.

The Tokios server (`proxy/tunnel/`) and the connector both parse and build frames here, so the
two ends cannot drift apart. Control frames are JSON text frames with a `type`; response body
chunks are binary frames `[1 byte L][L bytes request id, ASCII][payload]`.

Parsing is strict where the server reads the connector: a connector is another tenant's program,
so every field is type-checked and bounded, and anything else raises `ProtocolError` (the server
then closes the connection with `CLOSE_PROTOCOL_ERROR`). The connector reads the server with the
same parser but may choose to log and ignore what it cannot read.

Flow control: the server grants each request a window of `Welcome.window` credit blocks. A
chunk frame costs one block per started 4 KiB of its payload (`credit_cost`), so a window bounds
both the bytes and the frames a request may have in flight. The connector sends a chunk frame
only while it holds the credit for it, and each `Credit` frame adds to it. The server hands
credit back as its client consumes what arrived, so a slow client slows the connector's read of
the upstream instead of filling memory; a connector that sends beyond its credit has broken the
protocol.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeGuard, overload

try:  # orjson is several times faster, but the connector must install with httpx + websockets only.
    import orjson

    dumps: Callable[[Any], bytes] = orjson.dumps
    loads: Callable[[str | bytes], Any] = orjson.loads
    JSONDecodeError: type[ValueError] = orjson.JSONDecodeError
except ImportError:  # pragma: no cover - exercised only where orjson is absent
    import json

    _encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))

    def dumps(obj: Any) -> bytes:
        return _encoder.encode(obj).encode()

    loads = json.loads
    JSONDecodeError = json.JSONDecodeError

PROTOCOL_VERSION = 2

MAX_ID_LENGTH = 64
MAX_CHUNK_PAYLOAD = 16 * 1024  # bytes of response body per binary frame
CREDIT_BLOCK = 4096  # a chunk frame costs one credit per started block of its payload
MAX_BODY_PART = 256 * 1024  # bytes of request body per `request` / `request.body` frame
MAX_FRAME_SIZE = 4 * 1024 * 1024  # both ends refuse larger WebSocket messages
DEFAULT_WINDOW = 256  # credit blocks in flight per request: at most 1 MiB of body, or 256 frames
MAX_WINDOW = 4096
MAX_BODY_PARTS = 4096  # 1 GiB of request body: refuse nonsense before buffering it
MAX_CONCURRENCY = 100_000
# Requests a connector's model server works on at once (llama.cpp's slots). The server queues what
# is beyond them, fairly across tenants; it trusts no connector with more than this.
MAX_SLOTS = 1024
MAX_HEADERS = 64
MAX_HEADER_NAME = 256
MAX_HEADER_VALUE = 8192
MAX_TEXT = 1000  # characters kept of free text (error messages, versions, model names)
MAX_MS = 2**31 - 1  # timing fields, in milliseconds
MAX_CREDIT = 1_000_000
# A W3C trace context `traceparent` of version 00 (https://www.w3.org/TR/trace-context/): version,
# trace id, parent span id, flags, lower-case hex; all-zero ids are invalid.
TRACEPARENT = re.compile(r"00-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}")

# What a connector may announce its upstream speaks natively (Hello.surfaces): the request paths
# /v1/chat/completions, /v1/messages, /v1/responses, /v1/embeddings, /v1/messages/count_tokens, and
# llama.cpp's /tokenize. Names it does not know are dropped, so newer connectors can announce more.
SURFACES = ("chat", "messages", "responses", "embeddings", "count_tokens", "tokenize")
MAX_MODELS = 256  # upstream model names a hello may list (Hello.models), each at most MAX_MODEL_NAME
MAX_MODEL_NAME = 200

# Close codes the server sends (docs: "Close codes").
CLOSE_AUTH_REJECTED = 4001
CLOSE_PROTOCOL_ERROR = 4002
CLOSE_TOKEN_REVOKED = 4003
CLOSE_VERSION_MISMATCH = 4004
CLOSE_HEARTBEAT_TIMEOUT = 4008

# `response.error` codes a connector may send; anything else is read as `upstream_error`.
ERROR_CODES = frozenset(
    {
        "upstream_unreachable",
        "upstream_timeout",
        "upstream_error",
        "path_not_allowed",
        "bad_request",
        "overloaded",
        "cancelled",
    }
)


class ProtocolError(ValueError):
    """A frame that breaks the protocol. `request_id` names the request it was about, if known."""

    def __init__(self, message: str, request_id: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.request_id = request_id


# --- frames, connector → server ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hello:
    protocol: int
    version: str
    upstream: str
    model: str | None
    max_concurrency: int
    # Absent in older connectors: the server then assumes min(max_concurrency, MAX_SLOTS).
    slots: int | None = None
    # What the upstream speaks natively (names from SURFACES), learned by probing it; None from a
    # connector that did not probe (an older one): the server then translates as before.
    surfaces: tuple[str, ...] | None = None
    # The models the upstream serves (its /v1/models), for deployments made from one connector.
    models: tuple[str, ...] | None = None
    type: str = field(default="hello", init=False)


@dataclass(frozen=True, slots=True)
class ResponseStart:
    id: str
    status: int
    headers: dict[str, str]
    type: str = field(default="response.start", init=False)


@dataclass(frozen=True, slots=True)
class ResponseEnd:
    id: str
    upstream_ms: int = 0
    ttfb_ms: int = 0
    type: str = field(default="response.end", init=False)


@dataclass(frozen=True, slots=True)
class ResponseError:
    id: str
    code: str
    message: str = ""
    type: str = field(default="response.error", init=False)


@dataclass(frozen=True, slots=True)
class Pong:
    t: float | None = None
    type: str = field(default="pong", init=False)


@dataclass(frozen=True, slots=True)
class Draining:
    type: str = field(default="draining", init=False)


@dataclass(frozen=True, slots=True)
class Slots:
    """The connector learned a new slot count (sent only to a server whose welcome allows it)."""

    slots: int
    type: str = field(default="slots", init=False)


@dataclass(slots=True)
class Chunk:
    """A binary frame: a piece of a response body. (Not frozen: one is made per body chunk, and a
    frozen dataclass costs about three times as much to build.)"""

    id: str
    payload: bytes


# --- frames, server → connector ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Welcome:
    deployment: str
    connector_id: str
    heartbeat_interval: float
    heartbeat_timeout: float
    window: int = DEFAULT_WINDOW
    protocol: int = PROTOCOL_VERSION
    # The server reads `slots` frames (older servers close a connection on a frame they do not know).
    slot_updates: bool = False
    type: str = field(default="welcome", init=False)


@dataclass(frozen=True, slots=True)
class Request:
    id: str
    method: str
    path: str
    headers: dict[str, str]
    body: str | None = None
    body_parts: int = 0
    # The server's dispatch span, for the connector's own span (tracing). Optional both ways: an
    # older server sends none, an older connector ignores it, and a malformed one reads as None.
    traceparent: str | None = None
    type: str = field(default="request", init=False)


@dataclass(frozen=True, slots=True)
class RequestBody:
    id: str
    data: str
    type: str = field(default="request.body", init=False)


@dataclass(frozen=True, slots=True)
class Cancel:
    id: str
    type: str = field(default="cancel", init=False)


@dataclass(frozen=True, slots=True)
class Credit:
    id: str
    blocks: int
    type: str = field(default="credit", init=False)


@dataclass(frozen=True, slots=True)
class Ping:
    t: float
    type: str = field(default="ping", init=False)


ConnectorFrame = Hello | ResponseStart | ResponseEnd | ResponseError | Pong | Draining | Slots
ServerFrame = Welcome | Request | RequestBody | Cancel | Credit | Ping


# --- encoding ------------------------------------------------------------------------------------


def encode(frame: ConnectorFrame | ServerFrame) -> str:
    """The JSON text frame for `frame`. The frames sent with every request are spelled out (a
    third of the cost of walking the dataclass's fields); the rest are walked."""
    data: dict[str, Any]
    match frame:
        case Request():
            data = {
                "type": "request",
                "id": frame.id,
                "method": frame.method,
                "path": frame.path,
                "headers": frame.headers,
                "body": frame.body,
                "body_parts": frame.body_parts,
            }
            if frame.traceparent is not None:
                data["traceparent"] = frame.traceparent
        case ResponseStart():
            data = {"type": "response.start", "id": frame.id, "status": frame.status, "headers": frame.headers}
        case ResponseEnd():
            timing = {"upstream_ms": frame.upstream_ms, "ttfb_ms": frame.ttfb_ms}
            data = {"type": "response.end", "id": frame.id, "timing": timing}
        case Credit():
            data = {"type": "credit", "id": frame.id, "blocks": frame.blocks}
        case _:
            data = {name: getattr(frame, name) for name in frame.__dataclass_fields__}
    return dumps(data).decode()


def credit_cost(payload_size: int) -> int:
    """Credit blocks a chunk frame with this much payload costs (at least one)."""
    return max(1, -(-payload_size // CREDIT_BLOCK))


def chunk_prefix(request_id: str) -> bytes:
    """The binary-frame header for one request, computed once per request rather than per chunk."""
    raw = request_id.encode("ascii")
    return bytes((len(raw),)) + raw


# --- parsing -------------------------------------------------------------------------------------


def valid_traceparent(value: object) -> TypeGuard[str]:
    """A `traceparent` of version 00, exactly (55 characters); anything else is not one."""
    return isinstance(value, str) and len(value) == 55 and TRACEPARENT.fullmatch(value) is not None


def valid_request_id(value: object) -> TypeGuard[str]:
    """Ids must fit the one-byte length prefix of binary frames and be printable ASCII."""
    return isinstance(value, str) and 0 < len(value) <= MAX_ID_LENGTH and value.isascii() and value.isprintable()


def decode_chunk(data: bytes) -> Chunk:
    """A binary frame from the connector."""
    if len(data) < 2:
        raise ProtocolError("binary frame too short")
    size = data[0]
    if size == 0 or len(data) < 1 + size:
        raise ProtocolError("binary frame with a bad id length")
    try:
        rid = data[1 : 1 + size].decode("ascii")
    except UnicodeDecodeError:
        raise ProtocolError("binary frame whose id is not ASCII") from None
    if not valid_request_id(rid):
        raise ProtocolError("binary frame with an invalid id")
    payload = data[1 + size :]
    if len(payload) > MAX_CHUNK_PAYLOAD:
        raise ProtocolError(f"binary frame over {MAX_CHUNK_PAYLOAD} bytes of payload", rid)
    return Chunk(rid, payload)


def _object(raw: str | bytes) -> dict[str, Any]:
    if len(raw) > MAX_FRAME_SIZE:  # in characters for text: never fewer than the bytes / 4
        raise ProtocolError(f"frame larger than {MAX_FRAME_SIZE} bytes")
    try:
        data = loads(raw)
    except (JSONDecodeError, ValueError, RecursionError):
        raise ProtocolError("frame is not JSON") from None
    if not isinstance(data, dict):
        raise ProtocolError("frame is not a JSON object")
    kind = data.get("type")
    if not isinstance(kind, str):
        raise ProtocolError("frame has no type")
    return data


def _id(data: dict[str, Any]) -> str:
    rid = data.get("id")
    if not valid_request_id(rid):
        raise ProtocolError(f"{data['type']} frame with an invalid id")
    return rid


def _int(
    data: dict[str, Any], name: str, low: int, high: int, *, default: int | None = None, rid: str | None = None
) -> int:
    value = data.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ProtocolError(f"{data['type']}.{name} must be an integer from {low} to {high}", rid)
    return value


@overload
def _text(data: dict[str, Any], name: str, *, optional: Literal[False] = False, rid: str | None = None) -> str: ...
@overload
def _text(data: dict[str, Any], name: str, *, optional: Literal[True], rid: str | None = None) -> str | None: ...
def _text(data: dict[str, Any], name: str, *, optional: bool = False, rid: str | None = None) -> str | None:
    value = data.get(name)
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise ProtocolError(f"{data['type']}.{name} must be a string", rid)
    return value[:MAX_TEXT]


@overload
def _number(data: dict[str, Any], name: str, *, optional: Literal[False] = False) -> float: ...
@overload
def _number(data: dict[str, Any], name: str, *, optional: Literal[True]) -> float | None: ...
def _number(data: dict[str, Any], name: str, *, optional: bool = False) -> float | None:
    value = data.get(name)
    if value is None and optional:
        return None
    # A range check rather than math.isfinite: that converts a huge int to float and raises.
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not -1e300 < value < 1e300:
        raise ProtocolError(f"{data['type']}.{name} must be a finite number")
    return float(value)


def _headers(data: dict[str, Any], rid: str | None) -> dict[str, str]:
    value = data.get("headers")
    if value is None:
        return {}
    if not isinstance(value, dict) or len(value) > MAX_HEADERS:
        raise ProtocolError(f"{data['type']}.headers must be an object of at most {MAX_HEADERS} strings", rid)
    for name, item in value.items():
        if not isinstance(item, str) or len(name) > MAX_HEADER_NAME or len(item) > MAX_HEADER_VALUE:
            raise ProtocolError(f"{data['type']}.headers must map short names to strings", rid)
    return value


def _names(data: dict[str, Any], name: str, most: int) -> list[str] | None:
    value = data.get(name)
    if value is None:
        return None
    if not isinstance(value, list) or len(value) > most:
        raise ProtocolError(f"hello.{name} must be a list of at most {most} strings")
    if not all(isinstance(item, str) and 0 < len(item) <= MAX_MODEL_NAME for item in value):
        raise ProtocolError(f"hello.{name} must hold strings of 1 to {MAX_MODEL_NAME} characters")
    return value


def _surfaces(data: dict[str, Any]) -> tuple[str, ...] | None:
    names = _names(data, "surfaces", 4 * len(SURFACES))
    return None if names is None else tuple(name for name in SURFACES if name in names)


def _models(data: dict[str, Any]) -> tuple[str, ...] | None:
    names = _names(data, "models", MAX_MODELS)
    return None if names is None else tuple(dict.fromkeys(names))


def decode_from_connector(raw: str | bytes) -> ConnectorFrame:
    """A text frame the server received; ProtocolError for anything malformed or unknown."""
    data = _object(raw)
    kind = data["type"]
    if kind == "response.start":
        rid = _id(data)
        return ResponseStart(rid, _int(data, "status", 100, 599, rid=rid), _headers(data, rid))
    if kind == "response.end":
        rid = _id(data)
        timing = data.get("timing")
        if timing is None:
            return ResponseEnd(rid)
        if not isinstance(timing, dict):
            raise ProtocolError("response.end.timing must be an object", rid)
        timing = {**timing, "type": "response.end.timing"}  # errors name the field, not what the connector put in it
        return ResponseEnd(
            rid,
            _int(timing, "upstream_ms", 0, MAX_MS, default=0, rid=rid),
            _int(timing, "ttfb_ms", 0, MAX_MS, default=0, rid=rid),
        )
    if kind == "response.error":
        rid = _id(data)
        code = _text(data, "code", rid=rid)
        message = _text(data, "message", optional=True, rid=rid) or ""
        return ResponseError(rid, code if code in ERROR_CODES else "upstream_error", message)
    if kind == "pong":
        return Pong(_number(data, "t", optional=True))
    if kind == "draining":
        return Draining()
    if kind == "slots":
        return Slots(_int(data, "slots", 1, MAX_SLOTS))
    if kind == "hello":
        return Hello(
            protocol=_int(data, "protocol", 0, 2**31 - 1),
            version=_text(data, "version", optional=True) or "?",
            upstream=_text(data, "upstream", optional=True) or "",
            model=_text(data, "model", optional=True),
            max_concurrency=_int(data, "max_concurrency", 1, MAX_CONCURRENCY),
            slots=_int(data, "slots", 1, MAX_SLOTS) if data.get("slots") is not None else None,
            surfaces=_surfaces(data),
            models=_models(data),
        )
    raise ProtocolError(f"unexpected frame type {kind[:40]!r}")


def decode_from_server(raw: str | bytes) -> ServerFrame:
    """A text frame the connector received; ProtocolError for anything malformed or unknown.
    Errors about a `request` carry its id when it was valid, so the connector can refuse it."""
    data = _object(raw)
    kind = data["type"]
    if kind == "request":
        rid = _id(data)
        method = _text(data, "method", rid=rid)
        path = _text(data, "path", rid=rid)
        body = data.get("body")
        if body is not None and not isinstance(body, str):
            raise ProtocolError("request.body must be a string or null", rid)
        parts = _int(data, "body_parts", 0, MAX_BODY_PARTS, default=0, rid=rid)
        if parts and body is not None:
            raise ProtocolError("request with both an inline body and body_parts", rid)
        # Tracing is best effort: a malformed trace context is dropped, never a refused request.
        traceparent = data.get("traceparent")
        return Request(
            rid, method, path, _headers(data, rid), body, parts, traceparent if valid_traceparent(traceparent) else None
        )
    if kind == "request.body":
        rid = _id(data)
        part = data.get("data")
        if not isinstance(part, str):
            raise ProtocolError("request.body data must be a string", rid)
        return RequestBody(rid, part)
    if kind == "cancel":
        return Cancel(_id(data))
    if kind == "credit":
        rid = _id(data)
        return Credit(rid, _int(data, "blocks", 1, MAX_CREDIT, rid=rid))
    if kind == "ping":
        return Ping(_number(data, "t"))
    if kind == "welcome":
        return Welcome(
            deployment=_text(data, "deployment", optional=True) or "",
            connector_id=_text(data, "connector_id", optional=True) or "",
            heartbeat_interval=_number(data, "heartbeat_interval"),
            heartbeat_timeout=_number(data, "heartbeat_timeout"),
            window=_int(data, "window", 1, MAX_WINDOW, default=DEFAULT_WINDOW),
            protocol=_int(data, "protocol", 0, 2**31 - 1, default=1),
            slot_updates=data.get("slot_updates") is True,
        )
    raise ProtocolError(f"unexpected frame type {kind[:40]!r}")
