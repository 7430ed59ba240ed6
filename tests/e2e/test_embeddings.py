"""/v1/embeddings through the real tunnel: uvicorn + connector + the scripted upstream (a test double
whose vectors are computed from the input), with the official `openai` SDK as the client."""

from __future__ import annotations

import time

import openai
import pytest

from tests.e2e import surface_fixtures
from tests.e2e.scripted_upstream import ScriptedUpstream, embedding_for, embeddings

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

settle_usage_writes = surface_fixtures.settle_usage_writes  # autouse

TEXTS = ["the quick brown fox", "jumps"]


def client(server, key: str) -> openai.OpenAI:
    return openai.OpenAI(api_key=key, base_url=f"{server.url}/v1", max_retries=0, timeout=30)


def usage_event(org, request_id: str, timeout: float = 10.0):
    """The request's usage event, once the server's writer has stored it (within ~50 ms)."""
    from billing.models import UsageEvent

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        event = UsageEvent.objects.filter(org=org, request_id=request_id).first()
        if event is not None:
            return event
        time.sleep(0.05)
    raise AssertionError(f"no usage event for {request_id} within {timeout}s")


@pytest.fixture
def upstream():
    with ScriptedUpstream({"/v1/embeddings": embeddings()}) as scripted:
        yield scripted


def test_the_sdk_gets_vectors_by_default_through_base64_and_the_request_is_metered(
    server, tenant, start_connector, upstream
):
    start_connector(tenant.token, upstream=upstream.base)

    raw = client(server, tenant.key).embeddings.with_raw_response.create(model=tenant.model, input=TEXTS)
    result = raw.parse()

    assert [item.embedding for item in result.data] == [embedding_for(t, i) for i, t in enumerate(TEXTS)]
    assert (result.model, result.usage.prompt_tokens, result.usage.total_tokens) == (tenant.model, 5, 5)
    sent = upstream.bodies("/v1/embeddings")
    assert sent == [{"model": tenant.model, "input": TEXTS, "encoding_format": "float"}]  # the SDK asked base64
    event = usage_event(tenant.org, raw.headers["x-request-id"])
    assert (event.surface, event.status_code, event.input_tokens, event.output_tokens) == ("embeddings", 200, 5, 0)
    assert not event.usage_estimated
    assert event.cost_micros == 5  # 5 input tokens at $1 per million


def test_the_sdk_gets_floats_when_it_asks_for_them_also_for_token_ids(server, tenant, start_connector, upstream):
    start_connector(tenant.token, upstream=upstream.base)
    sdk = client(server, tenant.key)

    text = sdk.embeddings.create(model=tenant.model, input="hello world", encoding_format="float")
    tokens = sdk.embeddings.create(model=tenant.model, input=[[5, 6, 7], [8]], encoding_format="float")

    assert text.data[0].embedding == embedding_for("hello world", 0)
    assert [item.embedding for item in tokens.data] == [embedding_for([5, 6, 7], 0), embedding_for([8], 1)]
    assert tokens.usage.prompt_tokens == 4


def test_an_upstream_without_usage_is_billed_an_estimate_marked_estimated(server, tenant, start_connector):
    with ScriptedUpstream({"/v1/embeddings": embeddings(with_usage=False)}) as upstream:
        start_connector(tenant.token, upstream=upstream.base)
        raw = client(server, tenant.key).embeddings.with_raw_response.create(model=tenant.model, input="x" * 40)
        result = raw.parse()

    assert result.usage.prompt_tokens == 10  # about 4 characters a token
    event = usage_event(tenant.org, raw.headers["x-request-id"])
    assert (event.input_tokens, event.output_tokens, event.usage_estimated) == (10, 0, True)


class TestErrors:
    def test_an_unknown_key_is_401(self, server, tenant):
        with pytest.raises(openai.AuthenticationError):
            client(server, "sk-tokios-not-a-key").embeddings.create(model=tenant.model, input="x")

    def test_another_org_s_key_is_403(self, server, tenant):
        outsider = tenant.make_key(org=tenant.new_org())
        with pytest.raises(openai.PermissionDeniedError):
            client(server, outsider).embeddings.create(model=tenant.model, input="x")

    def test_an_unknown_model_is_404(self, server, tenant):
        with pytest.raises(openai.NotFoundError) as info:
            client(server, tenant.key).embeddings.create(model="no-such-model", input="x")
        assert info.value.body["code"] == "model_not_found"

    def test_an_empty_input_is_a_400_naming_it(self, server, tenant):
        with pytest.raises(openai.BadRequestError) as info:
            client(server, tenant.key).embeddings.create(model=tenant.model, input=[])
        assert info.value.body["param"] == "input"

    def test_no_connector_is_503_with_the_contract_message(self, server, tenant):
        with pytest.raises(openai.InternalServerError) as info:
            client(server, tenant.key).embeddings.create(model=tenant.model, input="x")
        assert info.value.status_code == 503
        assert "Connector offline — the tunnel is not active" in info.value.body["message"]
