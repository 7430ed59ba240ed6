"""/v1/chat/completions through the real tunnel: uvicorn + connector + fake upstream processes."""

from __future__ import annotations

import json
import os
import threading
import time

import httpx
import openai
import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def client(server, key: str, **kwargs) -> openai.OpenAI:
    return openai.OpenAI(api_key=key, base_url=f"{server.url}/v1", max_retries=0, **kwargs)


def post(server, key: str | None, body, **kwargs) -> httpx.Response:
    headers = {"content-type": "application/json", **kwargs.pop("headers", {})}
    if key:
        headers["authorization"] = f"Bearer {key}"
    content = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return httpx.post(f"{server.url}/v1/chat/completions", content=content, headers=headers, timeout=30, **kwargs)


def test_openai_sdk_gets_a_completion_through_the_tunnel(server, tenant, start_connector, fake_upstream):
    start_connector(tenant.token)
    completion = client(server, tenant.key).chat.completions.create(
        model=tenant.model, messages=[{"role": "user", "content": "say four words [[words=4]]"}]
    )
    assert completion.choices[0].message.content == "w0 w1 w2 w3"
    assert completion.model == tenant.model
    assert completion.usage.completion_tokens == 4
    assert completion.usage.prompt_tokens == 4  # the fake counts words of the prompt
    assert completion._request_id.startswith("req_")


def test_upstream_model_name_is_rewritten(server, tenant, start_connector, fake_upstream):
    from deployments.actions import update_deployment

    update_deployment(deployment=tenant.deployment, upstream_model="gemma3:270m")
    start_connector(tenant.token)
    client(server, tenant.key).chat.completions.create(
        model=tenant.model, messages=[{"role": "user", "content": "hi"}], max_completion_tokens=3
    )
    last = fake_upstream.stats()["last_body"]
    assert last["model"] == "gemma3:270m"
    assert last["max_tokens"] == 3


def test_openai_sdk_streams_tokens_and_hides_usage_unless_asked(server, tenant, start_connector):
    start_connector(tenant.token)
    sdk = client(server, tenant.key)
    chunks = list(
        sdk.chat.completions.create(
            model=tenant.model, stream=True, messages=[{"role": "user", "content": "go [[words=5]]"}]
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "w0 w1 w2 w3 w4"
    assert all(c.usage is None for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"

    with_usage = list(
        sdk.chat.completions.create(
            model=tenant.model,
            stream=True,
            stream_options={"include_usage": True},
            messages=[{"role": "user", "content": "go [[words=5]]"}],
        )
    )
    assert with_usage[-1].choices == []
    assert with_usage[-1].usage.completion_tokens == 5


def test_stream_helper_accumulates_the_final_message(server, tenant, start_connector):
    start_connector(tenant.token)
    with client(server, tenant.key).chat.completions.stream(
        model=tenant.model, messages=[{"role": "user", "content": "[[text=Hello_from_the_tunnel]]"}]
    ) as stream:
        final = stream.get_final_completion()
    assert final.choices[0].message.content == "Hello from the tunnel"


def test_stream_sets_headers_that_stop_proxy_buffering(server, tenant, start_connector):
    start_connector(tenant.token)
    with httpx.stream(
        "POST",
        f"{server.url}/v1/chat/completions",
        json={"model": tenant.model, "stream": True, "messages": [{"role": "user", "content": "x"}]},
        headers={"authorization": f"Bearer {tenant.key}"},
    ) as response:
        body = b"".join(response.iter_bytes())
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["cache-control"] == "no-cache"
    assert response.headers["x-accel-buffering"] == "no"
    assert response.headers["x-request-id"].startswith("req_")
    assert body.rstrip().endswith(b"data: [DONE]")


def test_tool_calls_pass_through(server, tenant, start_connector):
    start_connector(tenant.token)
    completion = client(server, tenant.key).chat.completions.create(
        model=tenant.model,
        messages=[{"role": "user", "content": "weather? [[tool=get_weather]]"}],
        tools=[{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}],
    )
    call = completion.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    assert completion.choices[0].finish_reason == "tool_calls"


def test_request_body_over_one_mebibyte_crosses_the_tunnel(server, tenant, start_connector, fake_upstream):
    start_connector(tenant.token)
    words = 300_000  # ~1.5 MiB of text
    big = " ".join(["é"] * words)
    completion = client(server, tenant.key).chat.completions.create(
        model=tenant.model, messages=[{"role": "user", "content": big}]
    )
    assert completion.usage.prompt_tokens == words


class TestErrors:
    def test_missing_key_is_401(self, server, tenant):
        response = post(server, None, {"model": tenant.model, "messages": [{"role": "user", "content": "x"}]})
        assert response.status_code == 401
        assert response.json()["error"]["type"] == "invalid_request_error"
        assert response.headers["x-request-id"].startswith("req_")

    def test_unknown_key_is_401_for_the_sdk(self, server, tenant):
        with pytest.raises(openai.AuthenticationError):
            client(server, "sk-tokios-nope").chat.completions.create(
                model=tenant.model, messages=[{"role": "user", "content": "x"}]
            )

    def test_revoked_key_is_401(self, server, tenant):
        from accounts.actions import revoke_api_key
        from accounts.models import ApiKey

        assert (
            post(
                server, tenant.key, {"model": tenant.model, "messages": [{"role": "user", "content": "x"}]}
            ).status_code
            == 503
        )
        revoke_api_key(key=ApiKey.objects.get(org=tenant.org))
        time.sleep(1.2)  # the local cache lives at most a second
        response = post(server, tenant.key, {"model": tenant.model, "messages": [{"role": "user", "content": "x"}]})
        assert response.status_code == 401
        assert "revoked" in response.json()["error"]["message"]

    def test_unknown_model_is_404(self, server, tenant):
        response = post(server, tenant.key, {"model": "no-such-model", "messages": [{"role": "user", "content": "x"}]})
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "model_not_found"

    def test_other_orgs_model_is_403(self, server, tenant):
        other = tenant.new_org()
        key = tenant.make_key(org=other)
        response = post(server, key, {"model": tenant.model, "messages": [{"role": "user", "content": "x"}]})
        assert response.status_code == 403
        assert response.json()["error"]["code"] == "model_not_allowed"

    def test_malformed_json_is_400(self, server, tenant):
        response = post(server, tenant.key, b'{"model": ')
        assert response.status_code == 400
        assert "JSON" in response.json()["error"]["message"]

    @pytest.mark.parametrize(
        ("body", "param"),
        [
            ({"messages": [{"role": "user", "content": "x"}]}, "model"),
            ({"model": "MODEL"}, "messages"),
            ({"model": "MODEL", "messages": "hi"}, "messages"),
            ({"model": "MODEL", "messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
            ({"model": "MODEL", "messages": [{"role": "user", "content": "x"}], "temperature": "hot"}, "temperature"),
            ({"model": "MODEL", "messages": [{"role": "user", "content": "x"}], "max_tokens": -1}, "max_tokens"),
        ],
    )
    def test_invalid_bodies_name_the_field(self, server, tenant, body, param):
        if body.get("model") == "MODEL":
            body["model"] = tenant.model
        response = post(server, tenant.key, body)
        assert response.status_code == 400
        assert response.json()["error"]["param"] == param

    def test_no_connector_is_503_with_the_contract_message(self, server, tenant):
        with pytest.raises(openai.InternalServerError) as info:
            client(server, tenant.key).chat.completions.create(
                model=tenant.model, messages=[{"role": "user", "content": "x"}]
            )
        assert info.value.status_code == 503
        assert "Connector offline — the tunnel is not active" in str(info.value)

    def test_upstream_failure_is_502(self, server, tenant, start_connector):
        start_connector(tenant.token)
        response = post(
            server, tenant.key, {"model": tenant.model, "messages": [{"role": "user", "content": "[[status=500]]"}]}
        )
        assert response.status_code == 502
        assert response.json()["error"]["type"] == "server_error"

    def test_unreachable_upstream_is_502(self, server, tenant, start_connector):
        from tests.e2e.conftest import free_port

        start_connector(tenant.token, upstream=f"http://127.0.0.1:{free_port()}/v1")
        response = post(server, tenant.key, {"model": tenant.model, "messages": [{"role": "user", "content": "x"}]})
        assert response.status_code == 502
        assert response.json()["error"]["code"] == "upstream_unreachable"

    def test_slow_upstream_is_504(self, start_server, tenant, start_connector):
        srv = start_server(TOKIOS_FIRST_BYTE_TIMEOUT="1")
        start_connector(tenant.token, srv=srv)
        response = post(
            srv,
            tenant.key,
            {"model": tenant.model, "messages": [{"role": "user", "content": "[[first_delay_ms=3000]]"}]},
        )
        assert response.status_code == 504

    def test_body_over_the_limit_is_413(self, start_server, tenant):
        srv = start_server(TOKIOS_MAX_BODY_BYTES="1000")
        response = post(srv, tenant.key, {"model": tenant.model, "messages": [{"role": "user", "content": "x" * 2000}]})
        assert response.status_code == 413

    def test_unknown_route_is_404_in_openai_shape(self, server):
        response = httpx.post(f"{server.url}/v1/nope", json={})
        assert response.status_code == 404
        assert response.json()["error"]["message"] == "Invalid URL (POST /v1/nope)"


class TestTunnelFailures:
    def test_two_connectors_share_the_load_and_survive_one_dying(self, server, tenant, start_connector):
        first = start_connector(tenant.token)
        second = start_connector(tenant.new_token())
        sdk = client(server, tenant.key)

        def call(i):
            sdk.chat.completions.create(
                model=tenant.model, messages=[{"role": "user", "content": f"{i} [[delay_ms=20 words=3]]"}]
            )

        threads = [threading.Thread(target=call, args=(i,)) for i in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        served = [p.output().count("POST /chat/completions") for p in (first, second)]
        assert sum(served) == 12
        assert min(served) >= 2, served  # least-loaded routing spreads concurrent work

        first.kill()
        time.sleep(0.3)
        for _ in range(4):
            completion = sdk.chat.completions.create(
                model=tenant.model, messages=[{"role": "user", "content": "after"}]
            )
            assert completion.choices[0].message.content.startswith("w0")

    def test_connector_killed_mid_stream_gives_an_error_event_promptly(self, server, tenant, start_connector):
        conn = start_connector(tenant.token)
        stream = client(server, tenant.key).chat.completions.create(
            model=tenant.model, stream=True, messages=[{"role": "user", "content": "[[words=200 delay_ms=50]]"}]
        )
        received = []
        started = time.monotonic()
        with pytest.raises(openai.APIError) as info:
            for chunk in stream:
                received.append(chunk)
                if len(received) == 3:
                    conn.kill()
        assert len(received) >= 3
        assert time.monotonic() - started < 5
        assert "tunnel" in str(info.value).lower() or "connector" in str(info.value).lower()

    def test_client_disconnect_aborts_the_upstream_request(self, server, tenant, start_connector, fake_upstream):
        start_connector(tenant.token)
        before = fake_upstream.stats()["aborted"]
        with httpx.stream(
            "POST",
            f"{server.url}/v1/chat/completions",
            json={
                "model": tenant.model,
                "stream": True,
                "messages": [{"role": "user", "content": "[[words=500 delay_ms=20]]"}],
            },
            headers={"authorization": f"Bearer {tenant.key}"},
        ) as response:
            for i, _ in enumerate(response.iter_lines()):
                if i > 4:
                    break
        deadline = time.monotonic() + 5
        while fake_upstream.stats()["aborted"] == before and time.monotonic() < deadline:
            time.sleep(0.1)
        assert fake_upstream.stats()["aborted"] == before + 1

    def test_connector_reconnects_after_a_server_restart(self, start_server, tenant, start_connector):
        srv = start_server()
        conn = start_connector(tenant.token, srv=srv)
        assert (
            post(srv, tenant.key, {"model": tenant.model, "messages": [{"role": "user", "content": "x"}]}).status_code
            == 200
        )
        mark = len(conn.output())
        srv.restart()
        conn.wait_for_output("connected to", timeout=40, after=mark)
        response = post(srv, tenant.key, {"model": tenant.model, "messages": [{"role": "user", "content": "x"}]})
        assert response.status_code == 200

    def test_bad_connector_token_exits_with_a_clear_message(self, server, start_connector, transactional_db):
        conn = start_connector("ctk-tokios-not-a-real-token", wait=False)
        assert conn.popen.wait(15) == 2
        assert "rejected" in conn.output()

    def test_revoked_token_disconnects_the_live_connector(self, server, tenant, start_connector):
        from deployments.actions import revoke_connector_token
        from deployments.models import ConnectorToken

        conn = start_connector(tenant.token)
        revoke_connector_token(token=ConnectorToken.objects.get(deployment=tenant.deployment))
        assert conn.popen.wait(15) == 2


@pytest.mark.redis
def test_request_on_one_process_reaches_a_connector_on_another(start_server, tenant, start_connector):
    assert os.environ.get("REDIS_URL")
    holder = start_server()
    front = start_server()
    start_connector(tenant.token, srv=holder)
    sdk = client(front, tenant.key)
    completion = sdk.chat.completions.create(model=tenant.model, messages=[{"role": "user", "content": "[[words=3]]"}])
    assert completion.choices[0].message.content == "w0 w1 w2"
    text = "".join(
        c.choices[0].delta.content or ""
        for c in sdk.chat.completions.create(
            model=tenant.model, stream=True, messages=[{"role": "user", "content": "[[words=40]]"}]
        )
        if c.choices
    )
    assert text.split() == [f"w{i}" for i in range(40)]


def test_a_wrong_method_gets_a_json_405(server):
    response = httpx.get(f"{server.url}/v1/chat/completions")
    assert response.status_code == 405
    assert response.json()["error"]["code"] == "method_not_allowed"
    assert "POST" in response.headers["allow"]
