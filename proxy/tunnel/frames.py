"""Frame shapes of the connector protocol (docs/connector-protocol.md), as TypedDicts."""

from __future__ import annotations

from typing import Literal, TypedDict

PROTOCOL_VERSION = 1
MAX_PART = 256 * 1024  # bytes of body per frame, both directions
MAX_FRAME = 4 * 1024 * 1024

CLOSE_AUTH_REJECTED = 4001
CLOSE_PROTOCOL_ERROR = 4002
CLOSE_TOKEN_REVOKED = 4003
CLOSE_HEARTBEAT_TIMEOUT = 4008


class Hello(TypedDict):
    type: Literal["hello"]
    protocol: int
    version: str
    upstream: str
    model: str | None
    max_concurrency: int


class Welcome(TypedDict):
    type: Literal["welcome"]
    deployment: str
    connector_id: str
    heartbeat_interval: float
    heartbeat_timeout: float


class Request(TypedDict):
    type: Literal["request"]
    id: str
    method: str
    path: str
    headers: dict[str, str]
    body: str | None
    body_parts: int


class RequestBody(TypedDict):
    type: Literal["request.body"]
    id: str
    data: str


class ResponseStart(TypedDict):
    type: Literal["response.start"]
    id: str
    status: int
    headers: dict[str, str]


class ResponseEnd(TypedDict):
    type: Literal["response.end"]
    id: str
    timing: dict[str, float]


class ResponseError(TypedDict):
    type: Literal["response.error"]
    id: str
    code: str
    message: str


class Cancel(TypedDict):
    type: Literal["cancel"]
    id: str


class Ping(TypedDict):
    type: Literal["ping"]
    t: float


def pack_chunk(request_id: str, payload: bytes) -> bytes:
    rid = request_id.encode()
    return bytes((len(rid),)) + rid + payload


def unpack_chunk(frame: bytes) -> tuple[str, bytes]:
    size = frame[0]
    return frame[1 : 1 + size].decode(), frame[1 + size :]
