"""POST /v1/embeddings: validated, bounded, passed to the model, its vectors returned as asked.

The model is always asked for floats, which every OpenAI-compatible server returns (base64 is not
universal); when the client asked for `encoding_format: "base64"` — what the official SDKs ask by
default — the gateway packs each vector as little-endian float32 and base64-encodes it, which is
what those SDKs decode. A model that answers base64 anyway is read too: passed through to a base64
client, unpacked for a float one.

Usage: the model's `usage.prompt_tokens`, parsed and bounded like a chat answer's; without it (or
with a value that is not a count) an estimate, recorded as estimated. Embeddings generate nothing:
output tokens are 0.
"""

from __future__ import annotations

import base64
import binascii
import struct

import orjson
from django.http import HttpResponseBase

from ..errors import GatewayError, json_response
from ..gateway import RequestScope
from ..stream import relay
from ..translate import log_odd_usage, read_usage
from ..upstream import open_call, read_body, upstream_error, upstream_model

# OpenAI's own bounds: at most 2,048 inputs, and 300,000 tokens summed over them, per request.
MAX_INPUTS = 2048
MAX_INPUT_TOKENS = 300_000
MAX_TOKEN_ID = 2**31 - 1  # what the model servers hold in a token id
MAX_DIMENSIONS = 65_536
ENCODINGS = ("float", "base64")
CHARS_PER_TOKEN = 4  # the estimate the other surfaces use


def _bad(message: str, param: str) -> GatewayError:
    return GatewayError(400, message, param=param, code="invalid_value")


def _is_token(value: object) -> bool:
    return type(value) is int and 0 <= value <= MAX_TOKEN_ID


def _check_tokens(tokens: list, param: str) -> int:
    """The length of a list of token ids, or a 400 naming what is wrong with it."""
    if not tokens:
        raise _bad(f"'{param}' must not be empty.", param)
    if not all(_is_token(t) for t in tokens):
        raise _bad(f"'{param}' must hold token ids: integers between 0 and {MAX_TOKEN_ID}.", param)
    return len(tokens)


def input_tokens_estimate(body: dict) -> int:
    """Validate `input` and return its size in tokens: exact for token ids, ≈ 4 characters per token
    for text. A 400 in OpenAI's shape for any other shape, or past the bounds above."""
    value = body.get("input")
    if value is None:
        raise _bad("Missing required parameter: 'input'.", "input")
    if isinstance(value, str):
        items: list = [value]
    elif isinstance(value, list) and value:
        items = value
    else:
        raise _bad(
            "'input' must be a string, an array of strings, an array of token ids or an array of arrays of token ids,"
            " and not empty.",
            "input",
        )
    if len(items) > MAX_INPUTS:
        raise _bad(f"'input' holds {len(items)} items; at most {MAX_INPUTS} are allowed per request.", "input")
    first = type(items[0])
    if first is str:
        total = 0
        for i, text in enumerate(items):
            if type(text) is not str:
                raise _bad("'input' must not mix strings with other values.", f"input[{i}]")
            if not text:
                raise _bad("'input' must not contain empty strings.", f"input[{i}]")
            total += -(-len(text) // CHARS_PER_TOKEN)
    elif first is int:
        total = _check_tokens(items, "input")
    elif first is list:
        total = 0
        for i, tokens in enumerate(items):
            if type(tokens) is not list:
                raise _bad("'input' must not mix arrays of token ids with other values.", f"input[{i}]")
            total += _check_tokens(tokens, f"input[{i}]")
    else:
        raise _bad("'input' items must be strings, token ids or arrays of token ids.", "input[0]")
    if total > MAX_INPUT_TOKENS:
        raise _bad(
            f"'input' is too large: about {total} tokens; at most {MAX_INPUT_TOKENS} are allowed per request.",
            "input",
        )
    return total


def validate(body: dict) -> tuple[int, str]:
    """(estimated input tokens, the encoding the client asked for)."""
    estimate = input_tokens_estimate(body)
    encoding = body.get("encoding_format")
    if encoding is None:
        encoding = "float"
    elif encoding not in ENCODINGS:
        raise _bad("'encoding_format' must be 'float' or 'base64'.", "encoding_format")
    dimensions = body.get("dimensions")
    if dimensions is not None and not (type(dimensions) is int and 1 <= dimensions <= MAX_DIMENSIONS):
        raise _bad(f"'dimensions' must be an integer between 1 and {MAX_DIMENSIONS}.", "dimensions")
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise _bad("'user' must be a string.", "user")
    return estimate, encoding


def upstream_body(scope: RequestScope, body: dict) -> dict:
    # As for chat, other fields pass through (a server's own options); the model name is the
    # deployment's, and floats are asked for (see the module docstring).
    return {**body, "model": upstream_model(scope), "encoding_format": "float"}


async def create_embeddings(scope: RequestScope) -> HttpResponseBase:
    body = scope.body
    await scope.resolve_model(body.get("model"))
    estimate, encoding = validate(body)
    await scope.check_limits(estimate)  # nothing is generated: the input is the whole reservation
    call, status = await open_call(scope, "/embeddings", upstream_body(scope, body))
    if status != 200:
        raise upstream_error(scope, status, await read_body(scope, call))
    collector = EmbeddingsBody(scope, estimate, encoding)
    scope.usage_source = collector
    async for _ in relay(scope, call, collector, emit=False):
        pass
    if collector.failed:
        scope.record.error_code = "upstream_error"
        raise GatewayError(502, collector.error_message, code="upstream_error", headers={"x-should-retry": "false"})
    return json_response(collector.result)


class BadVector(ValueError):
    """A vector from the model that is neither an array of numbers nor base64 float32."""


def _floats(embedding: object) -> list[float] | None:
    if isinstance(embedding, list) and embedding and all(type(v) is float or type(v) is int for v in embedding):
        return embedding
    return None


def _unpacked(embedding: object) -> bytes:
    """The float32 bytes of a base64 vector, checked."""
    if not isinstance(embedding, str):
        raise BadVector("an embedding is neither an array of numbers nor a base64 string")
    try:
        raw = base64.b64decode(embedding, validate=True)
    except binascii.Error:
        raise BadVector("an embedding is a string that is not base64") from None
    if not raw or len(raw) % 4:
        raise BadVector("an embedding in base64 is not a whole number of float32 values")
    return raw


def as_base64(embedding: object) -> str:
    values = _floats(embedding)
    if values is None:
        _unpacked(embedding)
        return embedding  # type: ignore[return-value]  # checked by _unpacked: a base64 string
    try:
        return base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode()
    except OverflowError:
        raise BadVector("an embedding holds a number outside float32's range") from None


def as_floats(embedding: object) -> list[float]:
    values = _floats(embedding)
    if values is not None:
        return values
    raw = _unpacked(embedding)
    return list(struct.unpack(f"<{len(raw) // 4}f", raw))


class EmbeddingsBody:
    """The model's answer, held until complete, then checked and rewritten in OpenAI's shape; a
    translator for the stream loop (proxy/stream.py) and the request's usage source."""

    stopped = False

    def __init__(self, scope: RequestScope, estimate: int, encoding: str):
        self.request_id = scope.request_id
        self.model = scope.resolved_deployment().name
        self.estimate = estimate
        self.encoding = encoding
        self.parts: list[bytes] = []
        self.prompt_tokens: int | None = None
        self.odd_usage = False
        self.failed = False
        self.has_output = False
        self.error_message = ""
        self.result: dict = {}

    def usage(self) -> tuple[int, int, bool]:
        if self.prompt_tokens is None:
            return self.estimate, 0, True
        return self.prompt_tokens, 0, self.odd_usage

    def start(self) -> bytes:
        return b""

    def keepalive(self) -> bytes:
        return b""

    def buffered(self) -> int:
        return 0  # the loop counts what a non-streamed response holds

    def feed(self, data: bytes) -> bytes:
        self.parts.append(data)
        return b""

    def fail(self, message: str, code: str) -> bytes:
        return b""

    async def end(self) -> bytes:
        self.has_output = True
        try:
            data = orjson.loads(b"".join(self.parts))
        except orjson.JSONDecodeError:
            data = None
        self.parts = []
        if not isinstance(data, dict) or not isinstance(data.get("data"), list):
            return self._fail("The model server sent an embeddings response without a list of embeddings.")
        self._take_usage(data.get("usage"))
        encode = as_base64 if self.encoding == "base64" else as_floats
        items = data["data"]
        out = []
        try:
            for position, item in enumerate(items):
                if not isinstance(item, dict):
                    raise BadVector("an item of its data is not an object")
                index = item.get("index")
                if not (type(index) is int and 0 <= index < len(items)):
                    index = position
                out.append({"object": "embedding", "index": index, "embedding": encode(item.get("embedding"))})
        except BadVector as exc:
            return self._fail(f"The model server sent an invalid embeddings response: {exc}.")
        prompt, _, _ = self.usage()
        self.result = {
            "object": "list",
            "data": out,
            "model": self.model,
            "usage": {"prompt_tokens": prompt, "total_tokens": prompt},
        }
        return b""

    def _take_usage(self, usage: object) -> None:
        reported = read_usage(usage)
        self.prompt_tokens = reported.prompt
        odd = tuple(o for o in reported.odd if not o.startswith("completion_tokens="))
        if odd:
            self.odd_usage = True
            log_odd_usage(odd, self.request_id)

    def _fail(self, message: str) -> bytes:
        self.failed = True
        self.error_message = message
        return b""
