"""Frame encoding for the connector protocol (docs/connector-protocol.md).

Control frames are JSON text frames; response body chunks are binary frames
``[1 byte L][L bytes request id][payload]``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

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

MAX_ID_LENGTH = 64
# Per the protocol no frame carries more than 256 KiB of body, so frames stay far below max_size.
MAX_CHUNK_PAYLOAD = 256 * 1024
# Both ends allow frames up to 4 MiB (websockets defaults to 1 MiB).
MAX_FRAME_SIZE = 4 * 1024 * 1024


def valid_request_id(value: object) -> bool:
    """Ids must fit the one-byte length prefix of binary frames and be ASCII."""
    return isinstance(value, str) and 0 < len(value) <= MAX_ID_LENGTH and value.isascii()


def chunk_prefix(request_id: str) -> bytes:
    """The binary-frame header for one request, computed once per request rather than per chunk."""
    raw = request_id.encode("ascii")
    return bytes((len(raw),)) + raw


def chunk_frames(prefix: bytes, payload: bytes) -> Iterator[bytes]:
    """Binary frames for one payload, split so that none carries more than MAX_CHUNK_PAYLOAD."""
    size = len(payload)
    if size <= MAX_CHUNK_PAYLOAD:
        # The common case: one concatenation is the only copy (websockets must copy anyway to mask).
        yield prefix + payload
        return
    view = memoryview(payload)
    for start in range(0, size, MAX_CHUNK_PAYLOAD):
        yield prefix + view[start : start + MAX_CHUNK_PAYLOAD]


def parse_chunk(frame: bytes) -> tuple[str, bytes]:
    """Split a binary frame into (request id, payload); the server side's inverse of chunk_frames."""
    length = frame[0]
    return frame[1 : 1 + length].decode("ascii"), frame[1 + length :]
