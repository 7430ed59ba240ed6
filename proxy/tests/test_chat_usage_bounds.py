"""POST /v1/chat/completions: the model's token counts are parsed and bounded before they are billed
or shown. A count that is not an integer in 0..2^31-1 makes the request's usage estimated (logged);
the client sees the figures that were recorded, not the model's nonsense."""

from __future__ import annotations

import logging

import pytest

from proxy.calls import Data, Ended, Started

from .fake_call import DONE, FINISH, chat_body, chunk, delta, whole
from .v1 import V1_DB, call_v1

pytestmark = [V1_DB, pytest.mark.asyncio, pytest.mark.timeout(30)]

PATH = "/v1/chat/completions"
MAX_TOKENS = 2**31 - 1


def chat(model: str, *, stream: bool = False, text: str = "x" * 400, **extra) -> dict:
    return {"model": model, "stream": stream, "messages": [{"role": "user", "content": text}], **extra}


def usage_chunk(usage: dict) -> bytes:
    return chunk([], usage=usage)


@pytest.mark.parametrize("prompt", ["999999999999999999999999999999", 1e30, -4, 3.5, None])
async def test_a_whole_answer_whose_prompt_count_is_not_a_count_is_estimated(
    prompt, key, deployment, upstream, ledger, caplog
):
    caplog.set_level(logging.WARNING)
    upstream.answer(*whole(chat_body(usage={"prompt_tokens": prompt, "completion_tokens": 5})))

    response = await call_v1("POST", PATH, chat(deployment.name), secret=key.secret)

    assert response.status == 200
    record = ledger.only(status_code=200)
    assert (record.input_tokens, record.output_tokens) == (104, 5)  # ~4 characters a token, 4 a message
    assert response.json()["usage"] == {"prompt_tokens": 104, "completion_tokens": 5, "total_tokens": 109}
    if prompt is None:  # missing, not odd: the estimate is used without a word
        assert not record.usage_estimated
        return
    assert record.usage_estimated
    [line] = [r.getMessage() for r in caplog.records if "prompt_tokens=" in r.getMessage()]
    assert record.request_id in line


async def test_a_whole_answer_with_counts_past_the_bound_is_clamped_and_estimated(key, deployment, upstream, ledger):
    upstream.answer(*whole(chat_body(usage={"prompt_tokens": 2**63 - 1, "completion_tokens": 2**40})))

    response = await call_v1("POST", PATH, chat(deployment.name), secret=key.secret)

    record = ledger.only(status_code=200)
    assert (record.input_tokens, record.output_tokens, record.usage_estimated) == (MAX_TOKENS, MAX_TOKENS, True)
    assert record.cost_micros == deployment.cost_micros(MAX_TOKENS, MAX_TOKENS)
    assert response.json()["usage"]["completion_tokens"] == MAX_TOKENS


async def test_a_whole_answer_with_a_negative_completion_count_falls_back_to_the_estimate(
    key, deployment, upstream, ledger
):
    upstream.answer(*whole(chat_body(usage={"prompt_tokens": 7, "completion_tokens": -1})))

    response = await call_v1("POST", PATH, chat(deployment.name), secret=key.secret)

    record = ledger.only(status_code=200)
    assert (record.input_tokens, record.usage_estimated) == (7, True)
    assert response.json()["usage"]["prompt_tokens"] == 7
    assert response.json()["usage"]["completion_tokens"] == record.output_tokens >= 0


async def test_a_stream_whose_usage_is_not_counts_is_estimated_and_the_client_sees_the_recorded_figures(
    key, deployment, upstream, ledger
):
    odd = {"prompt_tokens": "999999999999999999999999999999", "completion_tokens": 3, "total_tokens": "x"}
    upstream.answer(
        Started(200, {"content-type": "text/event-stream"}),
        Data(delta("a") + delta("b") + delta("c")),
        Data(FINISH + usage_chunk(odd) + DONE),
        Ended(12, 3),
    )

    response = await call_v1(
        "POST", PATH, chat(deployment.name, stream=True, stream_options={"include_usage": True}), secret=key.secret
    )

    record = ledger.only(status_code=200, streamed=True)
    assert (record.input_tokens, record.output_tokens, record.usage_estimated) == (104, 3, True)
    [usage] = [e["usage"] for e in response.events() if e.get("usage")]
    assert usage == {"prompt_tokens": 104, "completion_tokens": 3, "total_tokens": 107}


async def test_a_clean_usage_chunk_is_passed_through_untouched(key, deployment, upstream, ledger):
    clean = {"prompt_tokens": 9, "completion_tokens": 1, "total_tokens": 10, "prompt_tokens_details": {"x": 1}}
    upstream.answer(
        Started(200, {"content-type": "text/event-stream"}),
        Data(delta("a") + FINISH + usage_chunk(clean) + DONE),
        Ended(12, 3),
    )

    response = await call_v1(
        "POST", PATH, chat(deployment.name, stream=True, stream_options={"include_usage": True}), secret=key.secret
    )

    assert [e["usage"] for e in response.events() if e.get("usage")] == [clean]
    record = ledger.only(status_code=200)
    assert (record.input_tokens, record.output_tokens, record.usage_estimated) == (9, 1, False)
