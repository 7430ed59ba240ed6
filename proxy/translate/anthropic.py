"""Anthropic Messages (``/v1/messages``) ⇄ Chat Completions — the public entry points.

Request side in ``anthropic_request``, stream side in ``anthropic_stream``.
"""

from __future__ import annotations

from .anthropic_request import (
    MessagesRequestInfo,
    count_tokens_prompt,
    count_tokens_tools,
    estimate_tokens,
    validate_and_translate_request,
)
from .anthropic_stream import MessagesStreamTranslator

__all__ = [
    "MessagesRequestInfo",
    "MessagesStreamTranslator",
    "count_tokens_prompt",
    "count_tokens_tools",
    "estimate_tokens",
    "validate_and_translate_request",
]
