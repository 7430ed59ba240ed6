"""One connector, many models, through real processes: uvicorn, one real connector and a labelled
upstream that serves two models (as Ollama or a llama.cpp router does). Two deployments share the
connector: the one that holds its token and one served by it (Deployment.served_by), each with its
own `upstream_model`. Each request reaches the upstream asking for its deployment's model, the client
gets the name it called back, /v1/models shows both online, and usage is recorded per deployment."""

from __future__ import annotations

import json
import time
import uuid

import httpx
import pytest

from tests.e2e.conftest import Tenant
from tests.e2e.scripted_upstream import ScriptedUpstream

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True), pytest.mark.timeout(90)]

# Tokens each upstream model reports, so that every usage row shows which model answered it.
PROMPT_TOKENS = {"gemma-3-1b": 11, "qwen2.5:0.5b": 23}


def answer(body) -> tuple[int, str, bytes]:
    """A chat completion that names the model it was asked for; an unknown model is a 404, as Ollama's."""
    model = body.get("model") if isinstance(body, dict) else None
    if model not in PROMPT_TOKENS:
        return 404, "application/json", json.dumps({"error": {"message": f"model {model!r} not found"}}).encode()
    completion = {
        "id": "chatcmpl-many",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": f"I am {model}"}, "finish_reason": "stop"}
        ],
        "usage": {
            "prompt_tokens": PROMPT_TOKENS[model],
            "completion_tokens": 3,
            "total_tokens": PROMPT_TOKENS[model] + 3,
        },
    }
    return 200, "application/json", json.dumps(completion).encode()


def models_list(_body) -> tuple[int, str, bytes]:
    data = [{"id": name, "object": "model", "owned_by": "library"} for name in PROMPT_TOKENS]
    return 200, "application/json", json.dumps({"object": "list", "data": data}).encode()


def chat(server, key: str, model: str) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "Who are you?"}]}
    return httpx.post(
        f"{server.url}/v1/chat/completions",
        content=json.dumps(body),
        headers={"content-type": "application/json", "authorization": f"Bearer {key}"},
        timeout=30,
    )


def events_of(org, count: int, timeout: float = 15.0) -> list:
    from billing.models import UsageEvent

    deadline = time.monotonic() + timeout
    while True:
        found = list(UsageEvent.objects.filter(org_id=org.pk))
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def test_two_deployments_share_one_connector_and_each_request_reaches_its_model(
    server, tenant: Tenant, start_connector
):
    from deployments.actions import create_deployment, update_deployment

    primary = update_deployment(deployment=tenant.deployment, upstream_model="gemma-3-1b")
    served = create_deployment(
        org=tenant.org,
        name=f"small-{uuid.uuid4().hex[:8]}",
        upstream_model="qwen2.5:0.5b",
        served_by=primary,
        price_input_micros=1_000_000,
        price_output_micros=1_000_000,
    )
    routes = {"/v1/chat/completions": answer, "/v1/models": models_list}
    with ScriptedUpstream(routes) as upstream:
        start_connector(tenant.token, upstream=upstream.base)

        answers = [chat(server, tenant.key, model) for model in (primary.name, served.name, primary.name)]
        listed = httpx.get(
            f"{server.url}/v1/models", headers={"authorization": f"Bearer {tenant.key}"}, timeout=10
        ).json()

        asked = [body["model"] for body in upstream.bodies("/v1/chat/completions")]

    assert [r.status_code for r in answers] == [200, 200, 200], [r.text for r in answers]
    # The client gets back the name it called; the upstream was asked for each deployment's own model.
    assert [r.json()["model"] for r in answers] == [primary.name, served.name, primary.name]
    assert [r.json()["choices"][0]["message"]["content"] for r in answers] == [
        "I am gemma-3-1b",
        "I am qwen2.5:0.5b",
        "I am gemma-3-1b",
    ]
    assert asked == ["gemma-3-1b", "qwen2.5:0.5b", "gemma-3-1b"]
    assert {m["id"]: m["online"] for m in listed["data"]} == {primary.name: True, served.name: True}

    events = [e for e in events_of(tenant.org, 4) if e.surface == "chat"]  # and one for the /v1/models call
    per_deployment = sorted((e.deployment_id, e.requested_model, e.input_tokens) for e in events)
    assert per_deployment == sorted(
        [
            (primary.id, primary.name, PROMPT_TOKENS["gemma-3-1b"]),
            (primary.id, primary.name, PROMPT_TOKENS["gemma-3-1b"]),
            (served.id, served.name, PROMPT_TOKENS["qwen2.5:0.5b"]),
        ]
    )
