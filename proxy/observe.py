"""What a finished /v1 request tells operators, in one place: `RequestScope.close()` calls
`request_finished` once per request, after its usage record was submitted, whether it succeeded,
failed, was refused or was abandoned by its client.

Each part has its own module: the Prometheus metrics (`proxy/request_metrics.py`) and the access
log line (`proxy/access_log.py`). None of them may raise into the request's end.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import access_log, request_metrics, tracing

if TYPE_CHECKING:
    from .gateway import RequestScope


def request_started(scope: RequestScope) -> None:
    """A scope was opened (`RequestScope.__init__`): the request is in flight until it closes."""
    request_metrics.request_started(scope)


def request_finished(scope: RequestScope) -> None:
    request_metrics.request_finished(scope)
    access_log.request_finished(scope)
    tracing.request_finished(scope)
