"""OpenAI Responses (``/v1/responses``) ⇄ Chat Completions — the public entry points.

Request side in ``responses_request``, stream side in ``responses_stream``.
"""

from __future__ import annotations

from .responses_request import ResponsesRequestInfo, validate_and_translate_request
from .responses_stream import ResponsesStreamTranslator, output_text

__all__ = ["ResponsesRequestInfo", "ResponsesStreamTranslator", "output_text", "validate_and_translate_request"]
