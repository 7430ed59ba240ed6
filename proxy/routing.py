"""Which connector of a pool a conversation goes to: its key, and the rendezvous over connectors.

A model server keeps the KV cache of the prompts it has just answered, so the next turn of a
conversation is much cheaper on the connector that served the last one. Requests of one
conversation therefore carry a key (`conversation_key`), and the router (proxy/tunnel/router.py)
prefers, among the pool's live connectors, the one that ranks first for that key by rendezvous
(highest-random-weight) hashing: every process ranks the same connectors the same way without
sharing any state, and a connector that comes or goes moves only the conversations it ranks first.

The key comes from the client's parsed body, in this order: `prompt_cache_key` (Responses, Chat
Completions), `metadata.user_id` (Messages), the conversation of `previous_response_id` (a response's
id is remembered with the key of the request that made it, so a chain of turns keeps the first
turn's key), else a hash of how the conversation begins (system text and first user message).
Bodies are hostile: only a bounded prefix of each is looked at.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Iterable

import orjson
from redis.exceptions import RedisError

from lib.redis import get_async_redis, redis_enabled, report_outage

log = logging.getLogger("tokios.routing")

MAX_KEY_CHARS = 256  # of a client's own key (prompt_cache_key, user_id, a response id)
MAX_MESSAGES_SCANNED = 32  # messages looked at to find the system text and the first user message
MAX_PARTS = 16  # content parts of one message hashed
MAX_HASHED_BYTES = 64 * 1024  # of each text hashed: a conversation's start is told apart well before

# Responses remembered with their conversation's key: long enough for an agent's session, bounded.
RESPONSE_TTL = 3600
MAX_REMEMBERED = 10_000
_responses: OrderedDict[str, tuple[float, str]] = OrderedDict()  # without Redis: id -> (expires, key)


def _text(value: object) -> str | None:
    return value[:MAX_KEY_CHARS] if isinstance(value, str) and value else None


def client_key(body: dict) -> str | None:
    """The conversation key a client sent itself: `prompt_cache_key`, or `metadata.user_id`."""
    key = _text(body.get("prompt_cache_key"))
    if key is not None:
        return "pck:" + key
    metadata = body.get("metadata")
    if isinstance(metadata, dict):
        user = _text(metadata.get("user_id"))
        if user is not None:
            return "user:" + user
    return None


def previous_response(body: dict) -> str | None:
    return _text(body.get("previous_response_id"))


def _bounded(value: object, *, parts: bool = True) -> bytes:
    """What is hashed of one piece of content: a bounded prefix of its text or of its first parts
    (one level of them: a list inside a part is hashed as JSON, not walked)."""
    if isinstance(value, str):
        return value[:MAX_HASHED_BYTES].encode("utf-8", "replace")
    if isinstance(value, list) and parts:
        return b"\x1e".join(_bounded(part, parts=False) for part in value[:MAX_PARTS])
    if isinstance(value, dict | list):
        # A content part: its text if it has one (the common case), else its bounded JSON.
        text = value.get("text") if isinstance(value, dict) else None
        if isinstance(text, str):
            return _bounded(text)
        try:
            return orjson.dumps(value)[:MAX_HASHED_BYTES]
        except TypeError:  # parsed JSON always serialises; anything else is not content
            return b""
    return b""


def opening_key(body: dict) -> str | None:
    """A hash of how the conversation begins: its system text (`system`, `instructions`, or the
    system/developer messages before the first user message) and its first user message, from
    `messages` (Chat Completions, Messages) or `input` (Responses). None when there is no user text."""
    digest = hashlib.blake2b(digest_size=16)
    for name in ("system", "instructions"):
        if name in body:
            digest.update(b"S" + _bounded(body[name]) + b"\x1d")
    items = body.get("messages")
    if items is None:
        items = body.get("input")
    if isinstance(items, str):  # Responses' shorthand: the input is one user message
        digest.update(b"U" + _bounded(items))
        return "open:" + digest.hexdigest()
    if not isinstance(items, list):
        return None
    for item in items[:MAX_MESSAGES_SCANNED]:
        if not isinstance(item, dict):
            continue
        role = item.get("role")
        if role in ("system", "developer"):
            digest.update(b"S" + _bounded(item.get("content")) + b"\x1d")
        elif role == "user":
            digest.update(b"U" + _bounded(item.get("content")))
            return "open:" + digest.hexdigest()
    return None


async def conversation_key(body: dict) -> str:
    """The key that keeps a conversation on one connector ("" when the body says nothing of one)."""
    key = client_key(body)
    if key is not None:
        return key
    previous = previous_response(body)
    if previous is not None:
        # A previous turn whose key is forgotten still names its conversation: the turns after it
        # keep to one connector from here on.
        return await key_of_response(previous) or "resp:" + previous
    return opening_key(body) or ""


# --- response id -> conversation key ------------------------------------------------------------


def _cache_id(response_id: str) -> str:
    return f"tokios:affinity:resp:{response_id}"


def _redis_failed(exc: Exception) -> None:
    report_outage(log, "conversation affinity in Redis failed; choosing connectors without it", exc)


async def remember_response(response_id: str, key: str) -> None:
    """Remember which conversation a response belongs to, for the turn that names it as previous."""
    if not key or not response_id:
        return
    response_id, key = response_id[:MAX_KEY_CHARS], key[: MAX_KEY_CHARS + 8]
    if redis_enabled():
        try:
            await get_async_redis().set(_cache_id(response_id), key, ex=RESPONSE_TTL)
        except (RedisError, OSError) as exc:
            _redis_failed(exc)
        return
    _responses[response_id] = (time.monotonic() + RESPONSE_TTL, key)
    _responses.move_to_end(response_id)
    while len(_responses) > MAX_REMEMBERED:
        _responses.popitem(last=False)


async def key_of_response(response_id: str) -> str | None:
    response_id = response_id[:MAX_KEY_CHARS]
    if redis_enabled():
        try:
            raw = await get_async_redis().get(_cache_id(response_id))
        except (RedisError, OSError) as exc:
            _redis_failed(exc)
            return None
        if raw is None:
            return None
        return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
    entry = _responses.get(response_id)
    if entry is None:
        return None
    expires, key = entry
    if expires < time.monotonic():
        del _responses[response_id]
        return None
    return key


def forget_responses() -> None:
    """Empty this process's memory of responses (tests)."""
    _responses.clear()


# --- rendezvous ---------------------------------------------------------------------------------


def weight(key: str, connector_id: str) -> int:
    """The rendezvous weight of a connector for a key: the same in every process."""
    raw = hashlib.blake2b(f"{key}\x00{connector_id}".encode("utf-8", "replace"), digest_size=8).digest()
    return int.from_bytes(raw, "big")


def ranked(key: str, connector_ids: Iterable[str]) -> list[str]:
    """Connector ids, the key's preferred first."""
    return sorted(connector_ids, key=lambda connector_id: weight(key, connector_id), reverse=True)
