"""The fake upstream (TEST DOUBLE) speaks Chat Completions the way the official openai SDK expects."""

from __future__ import annotations

import json
import time

import httpx
import openai
import pytest

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def client(origin: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{origin}/v1", api_key="unused", max_retries=0)


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def stats(origin: str) -> dict:
    return httpx.get(f"{origin}/_fake/stats").json()


def test_non_streaming_answer_and_usage(client: openai.OpenAI, origin: str) -> None:
    messages = [
        {"role": "system", "content": "be brief please"},
        {
            "role": "user",
            "content": [{"type": "text", "text": "two words"}, {"type": "text", "text": "and three more"}],
        },
    ]
    completion = client.chat.completions.create(model="anything", messages=messages)

    assert completion.object == "chat.completion"
    assert completion.model == "anything"
    choice = completion.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == "w0 w1 w2 w3 w4 w5 w6 w7"
    assert choice.finish_reason == "stop"
    assert completion.usage.prompt_tokens == 8  # 3 + 2 + 3 words
    assert completion.usage.completion_tokens == 8
    assert completion.usage.total_tokens == 16
    assert stats(origin)["last_body"]["messages"] == messages


def test_max_tokens_cuts_the_answer_with_length(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(model="m", messages=user("hi [[words=20]]"), max_tokens=3)
    assert completion.choices[0].message.content == "w0 w1 w2"
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage.completion_tokens == 3

    completion = client.chat.completions.create(model="m", messages=user("hi"), max_completion_tokens=2)
    assert completion.choices[0].message.content == "w0 w1"


def test_streaming_without_include_usage_has_no_usage_chunk(client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(model="m", messages=user("hi [[words=3]]"), stream=True))

    assert all(chunk.object == "chat.completion.chunk" for chunk in chunks)
    assert len({chunk.id for chunk in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[0].choices[0].delta.content == ""
    assert [c.choices[0].delta.content for c in chunks[1:4]] == ["w0", " w1", " w2"]
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert chunks[-1].choices[0].delta.content is None
    assert all(chunk.usage is None for chunk in chunks)
    assert all(chunk.choices for chunk in chunks)


def test_streaming_with_include_usage_ends_with_one_usage_chunk(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model="m",
            messages=user("one two [[text=Hello_there]]"),
            stream=True,
            stream_options={"include_usage": True},
        )
    )

    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello there"
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage.prompt_tokens == 3
    assert chunks[-1].usage.completion_tokens == 2
    assert [c.usage is not None for c in chunks].count(True) == 1


def test_stream_helper_accumulates_a_tool_call(client: openai.OpenAI) -> None:
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    with client.chat.completions.stream(
        model="m", messages=user("weather? [[tool=get_weather]]"), tools=tools, stream_options={"include_usage": True}
    ) as stream:
        final = stream.get_final_completion()

    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    assert final.usage.completion_tokens == 2


def test_non_streaming_tool_call(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(model="m", messages=user("[[tool=lookup]]"))
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    assert choice.message.tool_calls[0].function.name == "lookup"
    assert json.loads(choice.message.tool_calls[0].function.arguments) == {"city": "Paris"}


def test_status_directive_returns_a_llama_cpp_error(client: openai.OpenAI) -> None:
    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(model="m", messages=user("[[status=503]]"))
    assert caught.value.status_code == 503
    assert caught.value.body == {"code": 503, "message": "fake upstream error", "type": "server_error"}


def test_directives_come_from_the_last_user_message_only(client: openai.OpenAI) -> None:
    messages = [
        {"role": "user", "content": "[[status=500]]"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "[[words=2]]"},
    ]
    completion = client.chat.completions.create(model="m", messages=messages)
    assert completion.choices[0].message.content == "w0 w1"


def test_models_lists_the_fake_model(client: openai.OpenAI) -> None:
    assert [model.id for model in client.models.list()] == ["fake-model"]


def test_tokenize_and_apply_template_at_the_root(origin: str) -> None:
    tokens = httpx.post(f"{origin}/tokenize", json={"content": "one two  three"}).json()["tokens"]
    assert len(tokens) == 3 and all(isinstance(t, int) for t in tokens)
    messages = [{"role": "system", "content": "sys"}, {"role": "user", "content": [{"type": "text", "text": "hi"}]}]
    assert httpx.post(f"{origin}/apply-template", json={"messages": messages}).json() == {"prompt": "sys\nhi"}


def test_fail_after_drops_the_connection_mid_stream(origin: str) -> None:
    body = {"model": "m", "messages": user("[[fail_after=2]]"), "stream": True}
    received = b""
    with pytest.raises(httpx.RemoteProtocolError):
        with httpx.stream("POST", f"{origin}/v1/chat/completions", json=body) as response:
            assert response.status_code == 200
            for chunk in response.iter_raw():
                received += chunk
    assert b'"content":" w1"' in received
    assert b'" w2"' not in received and b"[DONE]" not in received
    assert stats(origin)["failed"] == 1


def test_delays_are_honoured_and_a_departed_client_counts_as_aborted(origin: str) -> None:
    body = {"model": "m", "messages": user("[[words=30 delay_ms=50 first_delay_ms=200]]"), "stream": True}
    started = time.monotonic()
    with httpx.stream("POST", f"{origin}/v1/chat/completions", json=body) as response:
        first = next(response.iter_raw())
        assert time.monotonic() - started >= 0.2
        assert b'"role":"assistant"' in first
    # Leaving the block closed the connection half-way through 30 words.
    deadline = time.monotonic() + 3
    while stats(origin)["aborted"] != 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    counts = stats(origin)
    assert counts["aborted"] == 1
    assert counts["completed"] == 0


def test_stats_count_and_reset(client: openai.OpenAI, origin: str) -> None:
    client.chat.completions.create(model="m", messages=user("hi"))
    client.models.list()
    counts = stats(origin)
    assert (counts["started"], counts["completed"], counts["aborted"]) == (2, 2, 0)
    assert counts["last_path"] == "GET /v1/models"

    httpx.post(f"{origin}/_fake/reset").raise_for_status()
    assert stats(origin)["started"] == 0
    assert stats(origin)["last_body"] is None
