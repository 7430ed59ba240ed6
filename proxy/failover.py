"""A call to the model that may be sent a second time, elsewhere, before its client heard anything.

`RoutedCall` is the `UpstreamCall` every surface gets (proxy/upstream.py `new_call`). It holds one
inner call at a time (a `TunnelCall`, or the test double of `settings.UPSTREAM_CALL`) and replaces
it, only while nothing of the response has gone to the client, in two cases:

- Retry: a connector failed the request before its response began (its model server refused the
  connection, or was at its limit, or the connector dropped), or the model answered with a 5xx
  status whose body nobody read yet. The request is sent once more, to another live connector of
  the same pool that has a free slot now (it does not wait in line). Once only, never to the same
  connector, never for a 4xx (the client's request is what the model refused), never after a byte
  (a streamed request's `: queued` comments count) went to the client. When no other connector can
  take it, the first failure is the answer.
- Fallback: the deployment has no live connector, or its line is full. If the key opted in
  (`ApiKey.use_fallbacks`), the deployment's fallbacks are tried in their order, each through its
  own pool with the body's `model` rewritten to its upstream model; one the key may not call, or
  that is disabled, is skipped. The request is then metered and priced as the fallback's.

What happened is on the scope: `record.retried`, `record.served_by_fallback` and `scope.fallback`,
which the response's headers (proxy/gateway.py) and the usage row show.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import orjson

from . import routing
from .access import get_deployment, key_allows
from .calls import CallError, Data, Ended, Failed, Started, UpstreamCall
from .gateway import RequestScope

# Failures of one connector before the response began, which another connector may not have.
RETRY_CODES = frozenset({"upstream_unreachable", "overloaded", "connector_disconnected"})
# Failures of the whole pool, for which the deployment's fallbacks exist.
FALLBACK_CODES = frozenset({"connector_offline", "queue_full"})

CallFactory = Callable[..., UpstreamCall]


def response_id(request_id: str) -> str:
    """The id the Responses surface gives a request's response (proxy/surfaces/responses.py)."""
    return "resp_" + request_id[4:]


class RoutedCall:
    """One request to the model, with its retry and its fallbacks (see the module docstring)."""

    def __init__(
        self, scope: RequestScope, factory: CallFactory, *, path: str, method: str, payload: dict | None
    ) -> None:
        self.scope = scope
        self.factory = factory
        self.path = path
        self.method = method
        self.payload = payload
        self.deployment = scope.resolved_deployment()  # the one serving: the fallback's, after one
        self.inner: UpstreamCall | None = None
        self.affinity = ""
        self.spoke = False  # the client has bytes (a queued stream's comments): no more switching
        self.pools = {self.deployment.pool}  # pools tried, a fallback sharing one is not tried again
        self.fallbacks = list(self.deployment.fallbacks)  # names still to try
        self.cancelled = False
        self.waited_ms = 0  # queue waits of calls replaced

    # --- what the scope and the request log read -------------------------------------------------

    @property
    def finished(self) -> bool:
        return self.cancelled or (self.inner is not None and self.inner.finished)

    @property
    def connector_id(self) -> str:
        return self.inner.connector_id if self.inner is not None else ""

    @property
    def queue_wait_ms(self) -> int:
        return self.waited_ms + (self.inner.queue_wait_ms if self.inner is not None else 0)

    # --- opening ----------------------------------------------------------------------------------

    async def _call(self, *, avoid: frozenset[str] = frozenset()) -> UpstreamCall:
        if self.inner is None and not self.affinity:
            self.affinity = await routing.conversation_key(self.scope.body)
        payload = self.payload
        if payload is not None and self.deployment is not self.scope.deployment and "model" in payload:
            payload = {**payload, "model": self.deployment.upstream_model or self.deployment.name}
        key = self.scope.authenticated_key()
        return self.factory(
            deployment_id=self.deployment.pool,
            request_id=self.scope.request_id,
            method=self.method,
            path=self.path,
            body=orjson.dumps(payload) if payload is not None else b"",
            org_id=key.org_id,
            key_id=key.id,
            trace=self.scope.trace,
            affinity=self.affinity,
            avoid=avoid,
        )

    async def admit(self, timeout: float, notice: float | None = None) -> int:
        if self.cancelled:
            raise CallError(502, "cancelled", "The request was cancelled before it was sent.")
        deadline = time.monotonic() + timeout
        if self.inner is None:
            self.inner = await self._call()
        while True:
            try:
                position = await self.inner.admit(max(0.0, deadline - time.monotonic()), notice)
            except CallError as exc:
                if not await self._fall_back(exc):
                    raise
                continue
            if position:
                self.spoke = True
            return position

    async def _fall_back(self, exc: CallError) -> bool:
        """Switch to the next fallback the key may use, for a pool that cannot take the request."""
        scope = self.scope
        key = scope.authenticated_key()
        if exc.code not in FALLBACK_CODES or self.spoke or self.cancelled or not key.use_fallbacks:
            return False
        while self.fallbacks:
            deployment = await get_deployment(self.fallbacks.pop(0))
            if deployment is None or deployment.disabled or not key_allows(key, deployment):
                continue
            if deployment.pool in self.pools:
                continue
            self.pools.add(deployment.pool)
            self.deployment = deployment
            scope.fallback = deployment
            scope.record.served_by_fallback = True
            scope.record.deployment_id = deployment.id
            self._replace(await self._call())
            return True
        return False

    def _replace(self, call: UpstreamCall) -> None:
        if self.inner is not None:
            self.waited_ms += self.inner.queue_wait_ms
        self.inner = call

    # --- the status -------------------------------------------------------------------------------

    async def start(self, timeout: float) -> Started:
        deadline = time.monotonic() + timeout
        while True:
            await self.admit(max(0.0, deadline - time.monotonic()))
            inner = self.inner
            assert inner is not None  # admit made it
            try:
                started = await inner.start(max(0.0, deadline - time.monotonic()))
            except CallError as exc:
                if exc.code in RETRY_CODES and await self._retry(inner, deadline):
                    continue
                raise
            if started.status >= 500 and await self._retry(inner, deadline):
                continue
            if started.status < 400 and self.scope.surface == "responses" and self.scope.body.get("store") is not False:
                await routing.remember_response(response_id(self.scope.request_id), self.affinity)
            return started

    async def _retry(self, failed: UpstreamCall, deadline: float) -> bool:
        """Send the request once more, to another connector of the pool that takes it now: True if
        one did (the failed call is then cancelled), False to answer the first failure."""
        scope = self.scope
        if scope.record.retried or self.spoke or self.cancelled or not failed.connector_id:
            return False
        retry = await self._call(avoid=frozenset({failed.connector_id}))
        try:
            await retry.admit(max(0.0, deadline - time.monotonic()))
        except CallError:
            await retry.cancel()
            return False
        await failed.cancel()  # a 5xx answer's body is not read: the model's work on it stops
        scope.record.retried = True
        self._replace(retry)
        return True

    # --- the body ---------------------------------------------------------------------------------

    async def next_item(self, timeout: float) -> Data | Ended | Failed | None:
        if self.inner is None:
            raise RuntimeError("next_item before start")
        return await self.inner.next_item(timeout)

    async def cancel(self) -> None:
        self.cancelled = True
        if self.inner is not None:
            await self.inner.cancel()
