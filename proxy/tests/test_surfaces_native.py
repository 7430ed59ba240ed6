"""POST /v1/messages, /v1/messages/count_tokens and /v1/responses passed through to a model server that
speaks them (proxy/surfaces/native.py), in process, against a scripted model (TEST DOUBLE).

The deployment's surface_mode and its connectors' announced surfaces choose the path; on the native
path the answer goes back as the model sent it, its own usage is metered (bounded), and errors keep
the caller's shape.
"""

from __future__ import annotations

import logging
import time

import orjson
import pytest
from asgiref.sync import sync_to_async

from deployments.models import Deployment
from proxy.calls import Data, Ended, Started
from proxy.tunnel import presence
from proxy.tunnel.presence import ConnectorInfo

from .fake_call import SILENCE, Delay, streamed, whole
from .v1 import ANTHROPIC, V1_DB, call_v1

pytestmark = [V1_DB, pytest.mark.asyncio, pytest.mark.timeout(30)]

MAX_TOKENS = 2**31 - 1


def sse(name: str, data: dict) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def message_start(usage: dict) -> bytes:
    message = {"id": "msg_up", "type": "message", "role": "assistant", "content": [], "model": "up", "usage": usage}
    return sse("message_start", {"type": "message_start", "message": message})


def text_delta(text: str) -> bytes:
    return sse(
        "content_block_delta",
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}},
    )


def message_delta(usage: dict) -> bytes:
    delta = {"stop_reason": "end_turn", "stop_sequence": None}
    return sse("message_delta", {"type": "message_delta", "delta": delta, "usage": usage})


MESSAGE_STOP = sse("message_stop", {"type": "message_stop"})


def native_message_stream(input_usage: dict, output_usage: dict | None) -> list[bytes]:
    parts = [message_start(input_usage), text_delta("Hel"), text_delta("lo")]
    if output_usage is not None:
        parts.append(message_delta(output_usage))
    return [*parts, MESSAGE_STOP]


def whole_message(usage: dict | None) -> bytes:
    body: dict[str, object] = {
        "id": "msg_up",
        "type": "message",
        "role": "assistant",
        "model": "up",
        "content": [{"type": "text", "text": "Hello"}],
        "stop_reason": "end_turn",
    }
    if usage is not None:
        body["usage"] = usage
    return orjson.dumps(body)


def responses_stream(usage: dict | None) -> list[bytes]:
    response = {"id": "resp_up", "object": "response", "status": "in_progress", "output": []}
    done = {**response, "status": "completed", "usage": usage}
    return [
        sse("response.created", {"type": "response.created", "sequence_number": 0, "response": response}),
        sse("response.output_text.delta", {"type": "response.output_text.delta", "sequence_number": 1, "delta": "Hi"}),
        sse("response.completed", {"type": "response.completed", "sequence_number": 2, "response": done}),
    ]


def message(model: str, *, stream: bool = False, **extra) -> dict:
    return {
        "model": model,
        "max_tokens": 64,
        "stream": stream,
        "messages": [{"role": "user", "content": "Hi"}],
        **extra,
    }


def response_request(model: str, **extra) -> dict:
    return {"model": model, "input": "Hi", "store": False, **extra}


async def send(key, body: dict, path: str = "/v1/messages", **kwargs):
    headers = ANTHROPIC if path.startswith("/v1/messages") else {}
    return await call_v1("POST", path, body, secret=key.secret, headers=headers, **kwargs)


async def set_mode(deployment, mode: str) -> None:
    await sync_to_async(Deployment.objects.filter(pk=deployment.pk).update)(surface_mode=mode)


async def connect(deployment, surfaces: list[str] | None, n: int = 1) -> None:
    now = time.time()
    info = ConnectorInfo(
        channel=f"chan-{n}",
        deployment_id=deployment.pk,
        token_id=1,
        connector_id=f"conn_{n}",
        version="test",
        remote="127.0.0.1",
        connected_since=now,
        last_heartbeat=now,
        surfaces=surfaces,
    )
    await presence.publish(info)


@pytest.fixture
def passthrough(deployment):
    Deployment.objects.filter(pk=deployment.pk).update(surface_mode="passthrough")
    return deployment


# --- which path -------------------------------------------------------------------------------------


async def test_translate_mode_asks_the_model_for_chat_completions_even_when_it_speaks_messages(
    key, deployment, upstream, ledger
):
    await set_mode(deployment, "translate")
    await connect(deployment, ["chat", "messages"])
    upstream.answer(*streamed("Hi"))

    response = await send(key, message(deployment.name))

    assert response.status == 200
    assert upstream.call.path == "/chat/completions"
    assert response.headers["x-tokios-surface"] == "translated"


@pytest.mark.parametrize(
    ("announced", "native"),
    [
        ([], False),  # no connector: translated
        ([None], False),  # a connector that announced nothing
        ([["chat", "messages"]], True),
        ([["chat", "messages"], ["chat"]], False),  # one of two does not speak it
        ([["chat", "messages"], ["messages"]], True),
    ],
)
async def test_auto_passes_through_only_when_every_live_connector_speaks_the_surface(
    announced, native, key, deployment, upstream, ledger
):
    for n, surfaces in enumerate(announced):
        await connect(deployment, surfaces, n)
    if native:
        upstream.answer(Started(200, {}), Data(whole_message({"input_tokens": 7, "output_tokens": 2})), Ended())
    else:
        upstream.answer(*streamed("Hi"))

    response = await send(key, message(deployment.name))

    assert response.status == 200
    assert upstream.call.path == ("/messages" if native else "/chat/completions")
    assert response.headers["x-tokios-surface"] == ("native" if native else "translated")


# --- messages, passed through -----------------------------------------------------------------------


async def test_a_streamed_message_goes_back_byte_for_byte_and_its_native_usage_is_metered(
    key, passthrough, upstream, ledger
):
    parts = native_message_stream(
        {"input_tokens": 30, "cache_read_input_tokens": 7, "output_tokens": 1}, {"output_tokens": 9}
    )
    upstream.answer(Started(200, {}), *(Data(p) for p in parts), Ended(12, 3))
    body = message(passthrough.name, stream=True, system="Be brief.", stop_sequences=["END"], top_k=5)

    response = await send(key, body)

    assert response.status == 200
    # As the model sent it, but for the model's name: the deployment's, as on every surface.
    assert response.body == b"".join(parts).replace(b'"model":"up"', b'"model":"gemma-tunnel"')
    assert response.headers["x-tokios-surface"] == "native"
    sent = upstream.call.body
    assert upstream.call.path == "/messages"
    assert sent == {**body, "model": passthrough.upstream_model or passthrough.name}
    record = ledger.only(surface="messages", status_code=200, streamed=True, cancelled=False, usage_estimated=False)
    assert (record.input_tokens, record.output_tokens) == (37, 9)
    assert record.cost_micros == passthrough.cost_micros(37, 9)


async def test_a_whole_message_goes_back_as_sent_with_its_usage_metered(key, passthrough, upstream, ledger):
    raw = whole_message({"input_tokens": 12, "output_tokens": 3})
    upstream.answer(*whole(raw))

    response = await send(key, message(passthrough.name))

    assert response.status == 200
    assert response.json() == {**orjson.loads(raw), "model": "gemma-tunnel"}
    assert upstream.call.body["stream"] is False
    record = ledger.only(status_code=200, streamed=False, usage_estimated=False)
    assert (record.input_tokens, record.output_tokens) == (12, 3)


@pytest.mark.parametrize(
    ("usage", "expected"),
    [
        ({"input_tokens": 2**63, "output_tokens": 2**40}, (MAX_TOKENS, MAX_TOKENS)),
        ({"input_tokens": 2**40, "cache_read_input_tokens": 2**40, "output_tokens": 1}, (MAX_TOKENS, 1)),
    ],
)
async def test_counts_past_the_bound_are_clamped_and_the_usage_flagged_estimated(
    usage, expected, key, passthrough, upstream, ledger, caplog
):
    caplog.set_level(logging.WARNING)
    upstream.answer(*whole(whole_message(usage)))

    await send(key, message(passthrough.name))

    record = ledger.only(status_code=200)
    assert (record.input_tokens, record.output_tokens) == expected
    assert record.cost_micros == passthrough.cost_micros(*expected)
    if max(usage.values()) > MAX_TOKENS:
        assert record.usage_estimated


@pytest.mark.parametrize("bad", ["12", -3, 2.5, True, [1]])
async def test_usage_that_is_not_a_count_is_estimated_and_logged(bad, key, passthrough, upstream, ledger, caplog):
    caplog.set_level(logging.WARNING)
    parts = native_message_stream({"input_tokens": bad, "output_tokens": 1}, {"output_tokens": bad})
    upstream.answer(Started(200, {}), *(Data(p) for p in parts), Ended())

    response = await send(key, message(passthrough.name, stream=True))

    assert response.status == 200
    record = ledger.only(status_code=200, usage_estimated=True)
    assert record.output_tokens == 2  # the two content deltas
    assert 0 < record.input_tokens < 100  # the prompt estimate, not the model's figure
    assert any(record.request_id in r.getMessage() for r in caplog.records)


async def test_a_stream_without_usage_is_metered_on_estimates(key, passthrough, upstream, ledger):
    parts = [text_delta("Hel"), text_delta("lo"), text_delta("!"), MESSAGE_STOP]
    upstream.answer(Started(200, {}), *(Data(p) for p in parts), Ended())

    await send(key, message(passthrough.name, stream=True))

    record = ledger.only(status_code=200, usage_estimated=True)
    assert record.output_tokens == 3
    assert record.input_tokens > 0


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"max_tokens": None}, "max_tokens"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": 2**31}, "max_tokens"),
        ({"max_tokens": "64"}, "max_tokens"),
        ({"messages": "Hi"}, "messages"),
        ({"stream": "yes"}, "stream"),
    ],
)
async def test_a_bad_request_is_an_anthropic_400_and_never_reaches_the_model(
    body, param, key, passthrough, upstream, ledger
):
    request = {**message(passthrough.name), **body}
    request = {name: value for name, value in request.items() if value is not None}

    response = await send(key, request)

    assert response.status == 400
    data = response.json()
    assert data["type"] == "error" and data["error"]["type"] == "invalid_request_error"
    assert param in data["error"]["message"]
    assert upstream.calls == []
    ledger.only(status_code=400)


async def test_the_model_s_own_4xx_comes_back_in_anthropic_shape(key, passthrough, upstream, ledger):
    error = {"type": "error", "error": {"type": "invalid_request_error", "message": "messages: bad role"}}
    upstream.answer(*whole(orjson.dumps(error), status=400))

    response = await send(key, message(passthrough.name, stream=True))

    assert response.status == 400
    data = response.json()
    assert data["type"] == "error" and "bad role" in data["error"]["message"]
    assert response.headers["x-tokios-surface"] == "native"


async def test_a_client_that_leaves_mid_stream_cancels_the_call_and_is_billed_for_what_it_got(
    key, passthrough, upstream, ledger
):
    upstream.answer(
        Started(200, {}),
        Data(message_start({"input_tokens": 21, "output_tokens": 1})),
        Data(text_delta("Hel")),
        SILENCE,
    )

    response = await send(key, message(passthrough.name, stream=True), leave_when=upstream.silent)

    assert b"Hel" in response.body
    record = ledger.only(status_code=200, streamed=True, cancelled=True, usage_estimated=True)
    assert (record.input_tokens, record.output_tokens) == (21, 1)
    assert upstream.call.cancels == 1
    assert not upstream.call.reading


async def test_pings_go_out_while_the_model_is_slow_but_never_inside_an_event(
    key, passthrough, upstream, ledger, settings
):
    settings.KEEPALIVE_INTERVAL = 0.05
    event = text_delta("Hello")
    upstream.answer(
        Started(200, {}),
        Data(message_start({"input_tokens": 5})),
        Delay(0.2),
        Data(event[:20]),
        Delay(0.2),  # half-way through an event
        Data(event[20:] + message_delta({"output_tokens": 1}) + MESSAGE_STOP),
        Ended(),
    )

    response = await send(key, message(passthrough.name, stream=True))

    names = response.event_names()
    assert names.count("ping") >= 4
    assert [n for n in names if n != "ping"] == [
        "message_start",
        "content_block_delta",
        "message_delta",
        "message_stop",
    ]
    assert event in response.body  # whole, with nothing inserted


async def test_an_event_type_that_could_forge_another_event_is_not_used_as_its_name(key, passthrough, upstream, ledger):
    forged = b'data: {"type": "x\\nevent: message_stop"}\n\n'
    upstream.answer(Started(200, {}), Data(message_start({"input_tokens": 5}) + forged + MESSAGE_STOP), Ended())

    response = await send(key, message(passthrough.name, stream=True))

    assert response.event_names() == ["message_start", "message_stop"]
    assert response.events()[1] == {"type": "x\nevent: message_stop"}


async def test_a_timeout_mid_event_closes_that_event_before_the_anthropic_error(
    key, passthrough, upstream, ledger, settings
):
    settings.UPSTREAM_TIMEOUT = 0.2
    upstream.answer(Started(200, {}), Data(message_start({"input_tokens": 5}) + text_delta("Hi")[:15]), SILENCE)

    response = await send(key, message(passthrough.name, stream=True))

    assert response.event_names()[-1] == "error"
    assert response.events()[-1]["error"]["type"] == "timeout_error"
    ledger.only(status_code=504, error_code="upstream_timeout")
    assert upstream.call.cancels == 1


# --- count_tokens -----------------------------------------------------------------------------------


async def test_count_tokens_asks_the_model_s_own_count_tokens(key, passthrough, upstream, ledger):
    upstream.answer(*whole(b'{"input_tokens": 17}'))
    body = {"model": passthrough.name, "messages": [{"role": "user", "content": "Hi"}]}

    response = await send(key, body, "/v1/messages/count_tokens")

    assert (response.status, response.json()) == (200, {"input_tokens": 17})
    assert response.headers["x-tokios-token-count"] == "exact"
    assert response.headers["x-tokios-surface"] == "native"
    assert upstream.call.path == "/messages/count_tokens"
    assert upstream.call.body["model"] == passthrough.upstream_model or passthrough.name


@pytest.mark.parametrize("answer", [b'{"input_tokens": -1}', b'{"input_tokens": 99999999999999}', b"nope"])
async def test_a_count_that_is_not_a_count_falls_back_to_the_gateway_s_own(answer, key, passthrough, upstream, ledger):
    upstream.answer(*whole(answer))
    upstream.answer(*whole(b"{}", status=404))  # no /apply-template either: the estimate
    body = {"model": passthrough.name, "messages": [{"role": "user", "content": "Hi"}]}

    response = await send(key, body, "/v1/messages/count_tokens")

    assert response.status == 200
    assert response.json()["estimated"] is True
    assert response.headers["x-tokios-surface"] == "translated"
    assert [c.path for c in upstream.calls] == ["/messages/count_tokens", "/apply-template"]


# --- responses --------------------------------------------------------------------------------------


async def test_a_stateless_responses_request_passes_through_and_its_usage_is_metered(
    key, passthrough, upstream, ledger
):
    parts = responses_stream({"input_tokens": 40, "output_tokens": 6, "total_tokens": 46})
    upstream.answer(Started(200, {}), *(Data(p) for p in parts), Ended())
    body = response_request(passthrough.name, stream=True, tools=[{"type": "web_search"}])

    response = await send(key, body, "/v1/responses")

    assert response.status == 200
    assert response.body == b"".join(parts)
    assert upstream.call.path == "/responses"
    assert upstream.call.body["tools"] == [{"type": "web_search"}]  # the model server's to run or refuse
    record = ledger.only(surface="responses", status_code=200, usage_estimated=False)
    assert (record.input_tokens, record.output_tokens) == (40, 6)


@pytest.mark.parametrize(
    "extra",
    [{"store": None}, {"store": True}, {"previous_response_id": "resp_abc"}],
    ids=["store-by-default", "store", "previous"],
)
async def test_responses_tokios_must_keep_or_resolve_are_translated(extra, key, passthrough, upstream, ledger):
    body = {name: value for name, value in {**response_request(passthrough.name), **extra}.items() if value is not None}
    upstream.answer(*streamed("Hi"))

    response = await send(key, body, "/v1/responses")

    assert response.headers["x-tokios-surface"] == "translated"
    if "previous_response_id" in extra:
        assert response.status == 400  # not stored here: the Responses contract's answer
        assert upstream.calls == []
    else:
        assert response.status == 200
        assert upstream.call.path == "/chat/completions"


async def test_a_whole_response_passes_through_with_its_usage(key, passthrough, upstream, ledger):
    answer = {"id": "resp_up", "model": "up", "output": [], "usage": {"input_tokens": 8, "output_tokens": 2}}
    upstream.answer(*whole(orjson.dumps(answer)))

    response = await send(key, response_request(passthrough.name), "/v1/responses")

    assert (response.status, response.json()) == (200, {**answer, "model": "gemma-tunnel"})
    record = ledger.only(status_code=200, usage_estimated=False)
    assert (record.input_tokens, record.output_tokens) == (8, 2)


async def test_a_bad_responses_request_is_an_openai_400(key, passthrough, upstream, ledger):
    response = await send(key, response_request(passthrough.name, max_output_tokens=-1), "/v1/responses")

    assert response.status == 400
    assert response.json()["error"]["param"] == "max_output_tokens"
    assert upstream.calls == []


async def test_the_model_s_5xx_comes_back_in_openai_shape(key, passthrough, upstream, ledger):
    upstream.answer(*whole(b'{"error": {"message": "out of memory", "type": "server_error"}}', status=500))

    response = await send(key, response_request(passthrough.name), "/v1/responses")

    assert response.status == 502
    error = response.json()["error"]
    assert error["type"] == "server_error" and "out of memory" in error["message"]


async def test_auto_passes_a_stateless_response_through_when_the_connectors_speak_responses(
    key, deployment, upstream, ledger
):
    await connect(deployment, ["chat", "responses"])
    error = {"type": "error", "sequence_number": 1, "code": "server_error", "message": "boom", "param": None}
    upstream.answer(Started(200, {}), Data(responses_stream(None)[0] + sse("error", error)), Ended())

    response = await send(key, response_request(deployment.name, stream=True), "/v1/responses")

    assert upstream.call.path == "/responses"
    assert response.event_names() == ["response.created", "error"]
    assert response.events()[-1] == error  # the model server's own error event, as it wrote it
    ledger.only(status_code=200, error_code="upstream_error", usage_estimated=True)


async def test_a_whole_answer_that_is_not_json_is_a_502(key, passthrough, upstream, ledger):
    upstream.answer(*whole(b"<html>oops</html>"))

    response = await send(key, response_request(passthrough.name), "/v1/responses")

    assert response.status == 502
    assert response.json()["error"]["code"] == "upstream_error"


NAMESPACED = {"type": "namespace", "name": "multi_agent_v1", "tools": [{"type": "function", "name": "wait_agent"}]}
FUNCTION = {"type": "function", "name": "shell", "parameters": {"type": "object", "properties": {}}}


@pytest.mark.parametrize(
    ("tools", "native"),
    [
        ([FUNCTION], True),
        ([FUNCTION, NAMESPACED], False),  # the model server would drop the namespace's functions
        ([{"type": "web_search", "external_web_access": False}], False),
    ],
    ids=["functions", "namespace", "hosted"],
)
async def test_auto_translates_a_response_whose_tools_are_not_all_functions(
    tools, native, key, deployment, upstream, ledger
):
    await connect(deployment, ["chat", "responses"])
    upstream.answer(*streamed("Hi"))

    response = await send(key, response_request(deployment.name, tools=tools), "/v1/responses")

    assert response.headers["x-tokios-surface"] == ("native" if native else "translated")
    assert upstream.call.path == ("/responses" if native else "/chat/completions")


@pytest.mark.parametrize(
    ("tools", "native"),
    [
        ([{"name": "Read", "input_schema": {"type": "object"}}], True),
        ([{"type": "custom", "name": "Read", "input_schema": {"type": "object"}}], True),
        ([{"type": "web_search_20250305", "name": "web_search"}], False),  # a server tool: left out when translated
    ],
    ids=["untyped", "custom", "server-tool"],
)
async def test_auto_translates_a_message_with_server_tools(tools, native, key, deployment, upstream, ledger):
    await connect(deployment, ["chat", "messages"])
    upstream.answer(*streamed("Hi"))

    response = await send(key, message(deployment.name, tools=tools))

    assert response.headers["x-tokios-surface"] == ("native" if native else "translated")
    assert upstream.call.path == ("/messages" if native else "/chat/completions")
