"""Server-sent-event encoding for clients and incremental parsing of upstream streams.

Both run once per token, so they work on bytes and avoid regexes and per-event allocations
beyond the JSON codec itself.
"""

from __future__ import annotations

import json
from typing import Any

try:  # orjson is several times faster than json for the small per-token payloads.
    import orjson

    _dumps = orjson.dumps
    _loads = orjson.loads
    _JSONDecodeError: type[Exception] = orjson.JSONDecodeError
except ImportError:  # pragma: no cover - orjson is in requirements, the fallback keeps tests honest
    orjson = None  # type: ignore[assignment]

    def _dumps(obj: Any) -> bytes:  # type: ignore[misc]
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()

    _loads = json.loads
    _JSONDecodeError = ValueError

__all__ = ["DONE", "SSEParser", "dumps", "encode_event", "loads"]

DONE = "[DONE]"

dumps = _dumps
loads = _loads


def encode_event(event: str | None, data: dict) -> bytes:
    """One SSE frame: ``event: X\\ndata: {json}\\n\\n`` (no ``event:`` line when event is None).

    JSON string escaping guarantees the payload holds no raw newline, so one ``data:`` line
    is always enough.
    """
    if event is None:
        return b"data: " + _dumps(data) + b"\n\n"
    return b"event: " + event.encode() + b"\ndata: " + _dumps(data) + b"\n\n"


def _as_error(payload: Any) -> dict:
    """Wrap a bare error object (llama.cpp legacy field, flat vLLM body) as ``{"error": {...}}``."""
    if isinstance(payload, dict):
        if "error" in payload:
            return payload
        return {"error": payload}
    return {"error": {"message": str(payload), "type": "upstream_error"}}


class SSEParser:
    """Incremental parser for the upstream's ``text/event-stream``.

    ``feed()`` returns, in order, the parsed JSON object of every complete event and the
    string ``"[DONE]"`` for the terminator. It tolerates CRLF/CR line ends, comment lines
    (llama.cpp ``: ping``), events split at any byte, multi-line ``data:``, a last event with
    no blank line after it (call ``flush()`` at EOF), llama.cpp's pre-#16109 ``error:``
    field, and Ollama's error body written without any ``data:`` framing. Error payloads
    always come back as a dict with an ``"error"`` key.
    """

    __slots__ = ("_buf", "_data", "_event", "_raw", "_is_error")

    def __init__(self) -> None:
        self._buf = b""
        self._data: list[bytes] = []
        self._event: bytes | None = None
        self._raw: list[bytes] = []
        self._is_error = False

    def feed(self, data: bytes) -> list[dict | str]:
        buf = self._buf + data if self._buf else data
        if b"\r" in buf:
            # A trailing CR may be the first half of a CRLF split across reads: keep it.
            tail = b""
            if buf.endswith(b"\r"):
                buf, tail = buf[:-1], b"\r"
            buf = buf.replace(b"\r\n", b"\n").replace(b"\r", b"\n") + tail
        cut = buf.rfind(b"\n")
        if cut < 0:
            self._buf = buf
            return []
        self._buf = buf[cut + 1 :]
        out: list[dict | str] = []
        for line in buf[:cut].split(b"\n"):
            self._line(line, out)
        return out

    def buffered(self) -> int:
        """Bytes held for an event not yet complete: a stream that never ends its lines must not
        grow this without bound, so the caller checks it against its own limit."""
        return len(self._buf) + sum(map(len, self._data)) + sum(map(len, self._raw))

    def flush(self) -> list[dict | str]:
        """Call at EOF: parse a final line and event that had no terminating newline."""
        out: list[dict | str] = []
        buf = self._buf.rstrip(b"\r")
        self._buf = b""
        if buf:
            self._line(buf, out)
        self._dispatch(out)
        return out

    def _line(self, line: bytes, out: list[dict | str]) -> None:
        if not line:
            if self._data or self._raw:
                self._dispatch(out)
            else:
                self._event = None
            return
        if line.startswith(b"data:"):
            value = line[5:]
            if value.startswith(b" "):
                value = value[1:]
            self._data.append(value)
            return
        first = line[:1]
        if first == b":":
            return  # comment / keep-alive
        if line.startswith(b"event:"):
            self._event = line[6:].strip()
            return
        if line.startswith(b"error:"):
            # llama.cpp before PR #16109 sent `error: {...}` instead of `data:`.
            value = line[6:]
            if value.startswith(b" "):
                value = value[1:]
            self._data.append(value)
            self._is_error = True
            return
        if line.startswith((b"id:", b"retry:")):
            return
        # Not an SSE field: an unframed JSON body (Ollama writes its error JSON this way
        # even on SSE responses). Collect until a blank line or EOF.
        self._raw.append(line)

    def _dispatch(self, out: list[dict | str]) -> None:
        event, self._event = self._event, None
        is_error, self._is_error = self._is_error, False
        if self._raw:
            raw = b"\n".join(self._raw)
            self._raw = []
            try:
                payload = _loads(raw)
            except _JSONDecodeError:
                payload = {"message": raw.decode("utf-8", "replace")[:500], "type": "upstream_error"}
            out.append(_as_error(payload))
        if not self._data:
            return
        data = self._data[0] if len(self._data) == 1 else b"\n".join(self._data)
        self._data = []
        if data.startswith(b"[DONE]"):
            out.append(DONE)
            return
        if not data.strip():
            return  # an event with an empty payload carries nothing to act on
        try:
            payload = _loads(data)
        except _JSONDecodeError:
            out.append(
                {
                    "error": {
                        "message": "Upstream sent an unparseable event: " + data.decode("utf-8", "replace")[:200],
                        "type": "upstream_error",
                    }
                }
            )
            return
        if is_error or event == b"error":
            out.append(_as_error(payload))
        elif isinstance(payload, dict):
            out.append(payload)
        # Anything else (a bare number, a list) is not a chunk; drop it.
