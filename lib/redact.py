"""Keeping secrets out of log lines.

Two kinds of secret can reach a log line: Tokios's own secrets (`sk-tokios-…` API keys,
`ctk-tokios-…` connector tokens, `pat-tokios-…` personal access tokens, `inv-tokios-…` invitation
secrets, `whsec-tokios-…` webhook signing secrets), and the paths that carry one: `/invitations/<secret>/` and
`/password/reset/<uid>/<token>/`. Django logs a request's path when it refuses it (a CSRF failure is a
`django.security.csrf` warning, a server error a `django.request` error), and such a path is a
working link until it expires. `RedactSecrets`, a filter on the log handlers (settings.LOGGING),
rewrites them before any line is written: what remains shows which page it was, not how to open it.
"""

from __future__ import annotations

import logging
import re

MASK = "***"

_PATTERNS = [
    # Path segments that are secrets. A segment ends at "/", whitespace, a quote, "?" or "#".
    (re.compile(r"(/invitations/)[^/\s'\"?#]+"), rf"\g<1>{MASK}"),
    # Two segments: the reset link; Django then redirects to /<uid>/set-password/, masked alike.
    # The one-segment pages (/password/reset/sent/, /done/) are left as they are.
    (re.compile(r"(/password/reset/)[^/\s'\"?#]+/[^/\s'\"?#]+"), rf"\g<1>{MASK}/{MASK}"),
    # Tokios's own secrets anywhere (a query string, an exception message, a repr).
    (re.compile(r"\b(sk|ctk|pat|inv|whsec)-tokios-[A-Za-z0-9_-]+"), rf"\g<1>-tokios-{MASK}"),
]


def redact(text: str) -> str:
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


class RedactSecrets(logging.Filter):
    """Rewrites a record's message (and traceback) with the secrets masked; drops nothing.

    Put on a handler, it sees every record that handler writes, whichever logger it came from."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: the handler reports it as it would have
            return True
        redacted = redact(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        # Formatter.format() prints exc_text, and formats the traceback into it only when unset.
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True
