"""The access log: one structured line per /v1 request, written when its scope closes.

`proxy/observe.py` calls `request_finished` once per request (success, error, refusal, a client that
left), after the usage record was submitted, so the line carries what the usage row does plus what a
row does not keep: the key's display prefix, the deployment's and org's names, the method and path,
the client's address and the model server's own timing as the connector measured it. Never a
prompt, a body or a secret: the fields are built one by one from the scope, not from the request.

`settings.ACCESS_LOG` picks the shape: `json` (one orjson object per line, the default), `text`
(`key=value` pairs, a value quoted as a JSON string when it holds anything but plain characters), or
`off`. The logger is `tokios.access`; settings.LOGGING gives it a handler that writes the bare line
to stderr (no level or time prefix, which would break a JSON line).

This runs on every request: the fields come from objects the request already holds (the scope, its
key and deployment records, its usage record), with no query and no extra lookup. Secrets are
masked here, in the only fields a client writes (method, path, model), as lib/redact.py masks them
in every other log line; its filter is not on this handler because it scans the whole line with
three regular expressions: +12 µs of CPU on a line that costs ~13 µs to build and hand over.
"""

from __future__ import annotations

import logging
import re
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson
from django.conf import settings

from accounts.secrets import API_KEY_PREFIX
from lib.redact import redact

if TYPE_CHECKING:
    from .gateway import RequestScope

log = logging.getLogger("tokios.access")
errors = logging.getLogger("tokios.gateway")

FORMATS = ("json", "text", "off")
MAX_PATH_CHARS = 256  # a path is the client's text: an unknown /v1 path may be anything
MAX_METHOD_CHARS = 16
CLIENT_GONE = 499  # no response existed when the request ended (nginx's code, as the usage row says)

# A text value that needs no quotes: what ids, names, paths and addresses are made of.
_BARE = re.compile(r"[A-Za-z0-9_.:/@+\-\[\]]+")


def request_finished(scope: RequestScope) -> None:
    """Write the request's line (never raises: the request has ended, whatever happens here)."""
    shape = settings.ACCESS_LOG
    if shape == "off" or not log.isEnabledFor(logging.INFO):
        return
    try:
        fields = access_fields(scope)
        log.info(as_json(fields) if shape == "json" else as_text(fields))
    except Exception:
        errors.exception("could not write the access line of request %s", scope.request_id)


def access_fields(scope: RequestScope) -> dict[str, Any]:
    """The line's fields, in order (docs: the access log). Times are integer milliseconds."""
    record = scope.record
    request = scope.request
    key = scope.key
    deployment = scope.deployment
    status = record.status_code or CLIENT_GONE
    if scope.metered:
        total_ms = record.latency_ms  # set by RequestScope.close() for the usage row
    else:
        total_ms = int((time.monotonic() - record.started) * 1000)
    upstream_ms = record.upstream_ms
    return {
        "time": _iso(record.created_at),
        "request_id": scope.request_id,
        "method": _text(request.method or "")[:MAX_METHOD_CHARS],
        "path": _text(request.path[:MAX_PATH_CHARS]),
        "status": status,
        "error": record.error_code or None,
        "surface": scope.surface or None,
        "org_id": record.org_id,
        "org": key.org_slug if key is not None else None,
        "key_id": record.key_id,
        "key": _display(key.prefix) if key is not None else None,
        "deployment": deployment.name if deployment is not None else None,
        "model": _text(record.requested_model) or None,
        "connector": record.connector_id or None,
        "streamed": record.streamed,
        "cancelled": record.cancelled or status == CLIENT_GONE,
        "tokens_in": record.input_tokens,
        "tokens_out": record.output_tokens,
        "estimated": record.usage_estimated,
        "cost_micros": record.cost_micros,
        "total_ms": total_ms,
        "added_ms": None if upstream_ms is None else max(0, total_ms - upstream_ms),
        "upstream_ms": upstream_ms,
        "queue_ms": record.queue_wait_ms,
        "ttft_ms": record.ttft_ms,
        "upstream_ttfb_ms": record.upstream_ttfb_ms,
        "client": request.META.get("REMOTE_ADDR") or None,
    }


def as_json(fields: dict[str, Any]) -> str:
    return orjson.dumps(fields).decode()


def as_text(fields: dict[str, Any]) -> str:
    return " ".join(f"{name}={_value(value)}" for name, value in fields.items())


def _value(value: object) -> str:
    if value is None:
        return "-"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, str):
        return value if _BARE.fullmatch(value) else orjson.dumps(value).decode()
    return str(value)


def _iso(seconds: float) -> str:
    """When the request arrived, in UTC to the millisecond (as the usage row's created_at)."""
    return datetime.fromtimestamp(seconds, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _display(prefix: str) -> str:
    """A key's display characters without `sk-tokios-`: the log handlers mask anything shaped like
    a Tokios secret, and the display prefix (which is not one) would come out as `sk-tokios-***`."""
    return prefix[len(API_KEY_PREFIX) :] if prefix.startswith(API_KEY_PREFIX) else prefix


# What every text lib/redact.py masks contains (a Tokios secret, or a path that carries one): a
# client's text without any of these needs no regular expression.
_SECRET_MARKS = ("-tokios-", "/invitations/", "/password/reset/")


def _text(value: str) -> str:
    """A client's text, masked as lib/redact.py masks log lines and safe to encode (a lone
    surrogate, which a path may hold, becomes "?")."""
    if not value.isascii():
        value = value.encode("utf-8", "replace").decode("utf-8")
    if any(mark in value for mark in _SECRET_MARKS):
        value = redact(value)
    return value
