"""The gateway's own response headers, which skip Django's per-header checks."""

from __future__ import annotations

from django.http import StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.test import RequestFactory

from proxy import usage
from proxy.errors import GatewayError, json_response
from proxy.gateway import Context


def context() -> Context:
    record = usage.RequestRecord(request_id="req_0123456789abcdef01234567", surface="chat")
    ctx = Context(request=RequestFactory().post("/v1/chat/completions"), surface="chat", request_id=record.request_id, record=record)
    ctx.headers = {"x-ratelimit-limit-requests": "60", "x-ratelimit-reset-requests": "1s"}
    return ctx


def test_the_gateway_headers_reach_the_response_as_django_sends_them_and_read_case_insensitively():
    response = context().finish_headers(json_response({"ok": True}))

    sent = dict(response.items())  # what Django's ASGI handler encodes and sends
    assert sent["x-request-id"] == sent["request-id"] == "req_0123456789abcdef01234567"
    assert sent["x-ratelimit-limit-requests"] == "60"
    assert response["X-RateLimit-Reset-Requests"] == "1s"
    assert sent["Content-Type"] == "application/json"


def test_streamed_and_error_responses_carry_them_too():
    ctx = context()
    streamed = ctx.finish_headers(StreamingHttpResponse(iter([b"data: [DONE]\n\n"]), content_type="text/event-stream"))
    error = ctx.error_response(GatewayError(429, "slow down", code="rate_limit_exceeded", headers={"retry-after": "2"}))

    assert streamed["x-ratelimit-limit-requests"] == "60"
    assert (error.status_code, error["retry-after"], error["x-request-id"]) == (429, "2", ctx.request_id)
    assert error["x-ratelimit-reset-requests"] == "1s"


def test_django_sends_every_header_in_order_including_those_middleware_adds_or_removes_later():
    response = context().finish_headers(json_response({"ok": True}))
    response["X-Content-Type-Options"] = "nosniff"  # as SecurityMiddleware does after the view
    del response["X-RateLimit-Reset-Requests"]

    sent = list(response.items())

    assert sent == list(HttpResponseBase.items(response))  # what Django's own mapping gives, in order
    assert ("X-Content-Type-Options", "nosniff") in sent
    assert "x-ratelimit-reset-requests" not in dict(sent)


def test_request_ids_sort_by_when_they_were_made_and_do_not_repeat_within_a_millisecond(monkeypatch):
    from proxy import gateway

    clock = iter([1_764_000_000_000_000_000, 1_764_000_000_000_400_000, 1_764_000_000_001_000_000])
    monkeypatch.setattr(gateway.time, "time_ns", lambda: next(clock))
    first, same_ms, next_ms = (gateway.new_request_id() for _ in range(3))

    assert first[:16] == same_ms[:16] == f"req_{1_764_000_000_000:012x}"  # the millisecond, in hex
    assert first < next_ms and same_ms < next_ms
    assert len(first) == 36 and int(first[4:], 16) >= 0
    monkeypatch.setattr(gateway.time, "time_ns", lambda: 1_764_000_000_000_000_000)
    assert len({gateway.new_request_id() for _ in range(10_000)}) == 10_000  # the random part
