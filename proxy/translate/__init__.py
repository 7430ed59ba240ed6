"""Pure format translation between the client surfaces and the Chat Completions upstream.

Nothing in this package imports Django: it turns client request bodies into upstream
Chat Completions bodies, and upstream ``chat.completion.chunk`` dicts into the client's
SSE events or final object. See ``/work/shared/reference/wire-formats.md`` §2, §3, §6.
"""

from __future__ import annotations

from ._common import ReportedUsage, log_odd_usage, read_usage
from .errors import TranslationError

__all__ = ["ReportedUsage", "TranslationError", "log_odd_usage", "read_usage"]
