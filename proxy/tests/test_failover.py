"""Retry and fallbacks on the /v1 path, in process (proxy/failover.py): a request a connector failed
before its response began is sent once more to another connector; a deployment with no live
connector or a full line hands the request to its fallbacks when the key opted in; the response's
headers and the usage record say what happened."""

from __future__ import annotations

import orjson
import pytest
from asgiref.sync import sync_to_async

from accounts.models import ApiKey
from billing import metering
from billing.models import UsageEvent
from deployments.actions import create_api_key as create_limited_api_key
from deployments.actions import create_deployment
from deployments.lifecycle import disable_deployment
from deployments.models import DeploymentFallback
from proxy.calls import CallError, Data, Ended, Failed, Started
from proxy.tunnel.router import OFFLINE_MESSAGE, QUEUE_FULL_MESSAGE

from .fake_call import DONE, FINISH, PROMPT_TOKENS, chat_body, delta, streamed, whole
from .v1 import V1_DB, call_v1

pytestmark = [V1_DB, pytest.mark.asyncio, pytest.mark.timeout(60)]

OFFLINE = CallError(503, "connector_offline", OFFLINE_MESSAGE)
QUEUE_FULL = CallError(503, "queue_full", QUEUE_FULL_MESSAGE)
ERROR_BODY = orjson.dumps({"error": {"message": "model crashed", "type": "server_error"}})


def chat(model: str, *, stream: bool = False) -> dict:
    return {"model": model, "stream": stream, "messages": [{"role": "user", "content": "Say hello"}]}


async def send(secret: str, model: str, *, stream: bool = False):
    return await call_v1("POST", "/v1/chat/completions", chat(model, stream=stream), secret=secret)


# --- retry --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize(
    "failure",
    [
        [Failed("upstream_unreachable", "connection refused")],
        [Failed("overloaded")],
        [Started(500, {}), Data(ERROR_BODY), Ended()],
        [Started(503, {}), Data(ERROR_BODY), Ended()],
    ],
    ids=["refused", "overloaded", "status-500", "status-503"],
)
async def test_a_failure_before_the_response_is_retried_once_on_another_connector(
    key, deployment, upstream, ledger, failure, stream
):
    upstream.answer(*failure, connector="conn_first")
    upstream.answer(*(streamed("Hello") if stream else whole(chat_body())), connector="conn_second")

    response = await send(key.secret, deployment.name, stream=stream)

    assert response.status == 200
    assert response.headers["x-tokios-retried"] == "1"
    assert response.headers["x-tokios-connector"] == "conn_second"
    assert "x-tokios-fallback" not in response.headers
    first, second = upstream.calls
    assert first.avoid == frozenset() and second.avoid == frozenset({"conn_first"})
    assert second.body == first.body and second.deployment_id == first.deployment_id == deployment.pk
    if isinstance(failure[0], Started):
        assert first.cancels == 1  # its error body was never read: the model stops
    record = ledger.only(status_code=200, retried=True, served_by_fallback=False, connector_id="conn_second")
    assert record.deployment_id == deployment.pk and record.input_tokens == PROMPT_TOKENS


async def test_a_request_is_retried_once_only(key, deployment, upstream, ledger):
    upstream.answer(Failed("upstream_unreachable", "refused"), connector="conn_first")
    upstream.answer(Started(502, {}), Data(ERROR_BODY), Ended(), connector="conn_second")
    upstream.answer(*whole(chat_body()), connector="conn_third")

    response = await send(key.secret, deployment.name)

    assert response.status == 502
    assert "model crashed" in response.json()["error"]["message"]
    assert response.headers["x-tokios-retried"] == "1"
    assert response.headers["x-tokios-connector"] == "conn_second"
    assert len(upstream.calls) == 2 and len(upstream.scripts) == 1
    ledger.only(status_code=502, retried=True)


async def test_without_another_connector_the_first_failure_is_the_answer(key, deployment, upstream, ledger):
    upstream.answer(Failed("upstream_unreachable", "connection refused"), connector="conn_only")

    response = await send(key.secret, deployment.name)

    assert response.status == 502
    assert response.json()["error"]["code"] == "upstream_unreachable"
    assert "x-tokios-retried" not in response.headers
    assert response.headers["x-tokios-connector"] == "conn_only"
    assert len(upstream.calls) == 1 and len(upstream.unrouted) == 1
    assert upstream.unrouted[0].avoid == frozenset({"conn_only"})
    ledger.only(status_code=502, retried=False, connector_id="conn_only")


@pytest.mark.parametrize("status", [400, 413, 422, 429])
async def test_a_4xx_of_the_model_is_not_retried(key, deployment, upstream, ledger, status):
    upstream.answer(Started(status, {}), Data(ERROR_BODY), Ended(), connector="conn_first")
    upstream.answer(*whole(chat_body()), connector="conn_second")

    response = await send(key.secret, deployment.name)

    assert response.status == (429 if status == 429 else 400)
    assert "x-tokios-retried" not in response.headers
    assert len(upstream.calls) == 1
    ledger.only(retried=False)


@pytest.mark.parametrize("code", ["upstream_timeout", "path_not_allowed", "bad_request"])
async def test_other_connector_failures_are_not_retried(key, deployment, upstream, ledger, code):
    upstream.answer(Failed(code), connector="conn_first")
    upstream.answer(*whole(chat_body()), connector="conn_second")

    response = await send(key.secret, deployment.name)

    assert response.status >= 500
    assert len(upstream.calls) == 1
    ledger.only(retried=False)


async def test_a_failure_after_the_first_byte_is_not_retried(key, deployment, upstream, ledger):
    upstream.answer(
        Started(200, {"content-type": "text/event-stream"}),
        Data(delta("Hel")),
        Failed("upstream_error", "died"),
        connector="conn_first",
    )
    upstream.answer(*streamed("Hello"), connector="conn_second")

    response = await send(key.secret, deployment.name, stream=True)

    assert response.status == 200
    assert b"Hel" in response.body and b"died" in response.body
    assert len(upstream.calls) == 1
    ledger.only(retried=False, connector_id="conn_first")


# --- fallbacks ----------------------------------------------------------------------------------------


@pytest.fixture
def fallback(org, deployment):
    """`deployment`'s fallback: priced differently, with its own upstream model name."""
    backup = create_deployment(
        org=org, name="gemma-backup", upstream_model="gemma-3-1b", price_input_micros=1_000_000, price_output_micros=0
    )
    DeploymentFallback.objects.create(deployment=deployment, fallback=backup, position=1)
    return backup


def opt_in(key) -> None:
    ApiKey.objects.filter(pk=key.pk).update(use_fallbacks=True)


@pytest.mark.parametrize("failure", [OFFLINE, QUEUE_FULL], ids=["offline", "queue-full"])
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
async def test_a_key_that_opted_in_is_served_by_the_fallback(
    key, deployment, fallback, upstream, ledger, failure, stream
):
    await sync_to_async(opt_in)(key)
    upstream.answer(failure)
    upstream.answer(*(streamed("Hello") if stream else whole(chat_body())), connector="conn_backup")

    response = await send(key.secret, deployment.name, stream=stream)

    assert response.status == 200
    assert response.headers["x-tokios-fallback"] == "gemma-backup"
    assert response.headers["x-tokios-connector"] == "conn_backup"
    assert "x-tokios-retried" not in response.headers
    primary, backup = upstream.calls
    assert primary.deployment_id == deployment.pk and primary.body["model"] == "gemma-tunnel"
    assert backup.deployment_id == fallback.pk and backup.body["model"] == "gemma-3-1b"
    assert backup.body["messages"] == primary.body["messages"]
    record = ledger.only(status_code=200, served_by_fallback=True, retried=False, requested_model=deployment.name)
    assert record.deployment_id == fallback.pk
    assert record.cost_micros == PROMPT_TOKENS  # the fallback's price: $1 per million input tokens, none for output


async def test_a_key_that_did_not_opt_in_gets_the_503_as_before(key, deployment, fallback, upstream, ledger):
    upstream.answer(OFFLINE)
    upstream.answer(*whole(chat_body()))

    response = await send(key.secret, deployment.name)

    assert response.status == 503
    assert response.json()["error"]["code"] == "connector_offline"
    assert "x-tokios-fallback" not in response.headers
    assert len(upstream.calls) == 1
    ledger.only(status_code=503, served_by_fallback=False, deployment_id=deployment.pk)


async def test_fallbacks_the_key_may_not_call_or_that_are_disabled_are_skipped(org, deployment, upstream, ledger):
    forbidden = await sync_to_async(create_deployment)(org=org, name="gemma-forbidden")
    disabled = await sync_to_async(create_deployment)(org=org, name="gemma-off")
    usable = await sync_to_async(create_deployment)(org=org, name="gemma-usable")
    await sync_to_async(disable_deployment)(deployment=disabled)
    for position, backup in enumerate((forbidden, disabled, usable)):
        await DeploymentFallback.objects.acreate(deployment=deployment, fallback=backup, position=position)
    key, secret = await sync_to_async(create_limited_api_key)(
        org=org, name="limited", deployments=[deployment, disabled, usable]
    )
    await sync_to_async(opt_in)(key)
    upstream.answer(OFFLINE)
    upstream.answer(*whole(chat_body()), connector="conn_usable")

    response = await send(secret, deployment.name)

    assert response.status == 200
    assert response.headers["x-tokios-fallback"] == "gemma-usable"
    assert [call.deployment_id for call in upstream.calls] == [deployment.pk, usable.pk]
    ledger.only(deployment_id=usable.pk, served_by_fallback=True)


async def test_fallbacks_are_tried_in_order_until_one_takes_the_request(
    org, key, deployment, fallback, upstream, ledger
):
    last = await sync_to_async(create_deployment)(org=org, name="gemma-last")
    await DeploymentFallback.objects.acreate(deployment=deployment, fallback=last, position=2)
    await sync_to_async(opt_in)(key)
    upstream.answer(OFFLINE)
    upstream.answer(QUEUE_FULL)
    upstream.answer(*whole(chat_body()))

    response = await send(key.secret, deployment.name)

    assert response.headers["x-tokios-fallback"] == "gemma-last"
    assert [call.deployment_id for call in upstream.calls] == [deployment.pk, fallback.pk, last.pk]


async def test_when_every_fallback_is_offline_too_the_answer_is_the_deployments_503(
    key, deployment, fallback, upstream, ledger
):
    await sync_to_async(opt_in)(key)
    upstream.answer(OFFLINE)
    upstream.answer(OFFLINE)

    response = await send(key.secret, deployment.name)

    assert response.status == 503
    assert response.json()["error"]["code"] == "connector_offline"
    assert len(upstream.calls) == 2


async def test_a_model_failure_is_no_reason_to_fall_back(key, deployment, fallback, upstream, ledger):
    await sync_to_async(opt_in)(key)
    upstream.answer(Started(400, {}), Data(ERROR_BODY), Ended())
    upstream.answer(*whole(chat_body()))

    response = await send(key.secret, deployment.name)

    assert response.status == 400
    assert len(upstream.calls) == 1


async def test_a_fallback_is_retried_on_another_of_its_connectors(key, deployment, fallback, upstream, ledger):
    await sync_to_async(opt_in)(key)
    upstream.answer(OFFLINE)
    upstream.answer(Failed("upstream_unreachable", "refused"), connector="conn_backup_1")
    upstream.answer(*whole(chat_body()), connector="conn_backup_2")

    response = await send(key.secret, deployment.name)

    assert response.status == 200
    assert response.headers["x-tokios-fallback"] == "gemma-backup"
    assert response.headers["x-tokios-retried"] == "1"
    assert [call.deployment_id for call in upstream.calls] == [deployment.pk, fallback.pk, fallback.pk]
    assert upstream.calls[2].body["model"] == "gemma-3-1b"
    ledger.only(retried=True, served_by_fallback=True, deployment_id=fallback.pk)


# --- the usage row ------------------------------------------------------------------------------------


async def test_the_usage_row_keeps_retried_and_served_by_fallback(key, deployment, fallback, upstream, ledger):
    await sync_to_async(opt_in)(key)
    upstream.answer(OFFLINE)
    upstream.answer(Failed("overloaded"), connector="conn_a")
    upstream.answer(
        Started(200, {"content-type": "text/event-stream"}), Data(delta("Hi") + FINISH + DONE), Ended(), connector="b"
    )

    response = await send(key.secret, deployment.name, stream=True)
    await metering.flush()

    event = await UsageEvent.objects.aget(request_id=response.headers["x-request-id"])
    assert (event.retried, event.served_by_fallback, event.deployment_id) == (True, True, fallback.pk)
    assert event.connector_id == "b"
