"""A disabled deployment on the /v1 path, in process: every surface refuses it with 503
`deployment_disabled` in the caller's shape (and `x-should-retry: false`), without calling the model;
a key that may not use it still gets the 403/404 it got before (a disabled model is told only to
those who may call it); /v1/models leaves it out and retrieving it answers the same 503; the
gateway's cache hears of the switch at once, both ways; and a cached record written by another
version still reads."""

from __future__ import annotations

import pytest
from asgiref.sync import sync_to_async

from deployments.lifecycle import disable_deployment, enable_deployment
from proxy.access import DeploymentRecord, _from_dict

from .fake_call import streamed
from .test_errors_contract import SURFACES, assert_error, send
from .v1 import ANTHROPIC, V1_DB, call_v1

pytestmark = [V1_DB, pytest.mark.asyncio, pytest.mark.timeout(30)]


async def disable(deployment) -> None:
    assert await sync_to_async(disable_deployment)(deployment=deployment)


async def enable(deployment) -> None:
    assert await sync_to_async(enable_deployment)(deployment=deployment)


@pytest.mark.parametrize("surface", SURFACES)
async def test_a_disabled_deployment_is_a_503_deployment_disabled_in_the_callers_shape(
    surface, key, deployment, upstream, ledger
):
    await disable(deployment)

    response = await send(surface, deployment.name, key.secret)

    error = assert_error(response, surface, 503, ("server_error", "deployment_disabled"), "api_error")
    assert "disabled" in error["message"] and deployment.name in error["message"]
    assert response.headers["x-should-retry"] == "false"
    assert "retry-after" not in response.headers
    assert upstream.calls == []
    ledger.only(surface=surface, status_code=503, error_code="deployment_disabled", key_id=key.pk)


@pytest.mark.parametrize("surface", SURFACES)
async def test_keys_that_may_not_call_it_are_not_told_it_is_disabled(
    surface, other_key, restricted_key, deployment, granted_deployment, upstream, ledger
):
    await disable(deployment)
    await disable(granted_deployment)

    outsider = await send(surface, deployment.name, other_key.secret)
    assert_error(outsider, surface, 403, ("permission_error", "model_not_allowed"), "permission_error")
    ledger.forget()
    limited = await send(surface, granted_deployment.name, restricted_key.secret)
    assert_error(limited, surface, 403, ("permission_error", "model_not_allowed"), "permission_error")
    assert upstream.calls == []


async def test_disable_then_enable_takes_effect_at_once_despite_the_cache(key, deployment, upstream, ledger):
    upstream.answer(*streamed("before"))
    assert (await send("chat", deployment.name, key.secret, stream=True)).status == 200  # now cached
    ledger.forget()

    await disable(deployment)
    refused = await send("chat", deployment.name, key.secret)
    assert refused.status == 503 and refused.json()["error"]["code"] == "deployment_disabled"
    ledger.forget()

    await enable(deployment)
    upstream.answer(*streamed("after"))
    again = await send("chat", deployment.name, key.secret, stream=True)
    assert again.status == 200, again.body
    assert len(upstream.calls) == 2
    ledger.only(status_code=200, deployment_id=deployment.pk)


async def test_the_models_list_leaves_a_disabled_deployment_out(key, deployment, granted_deployment, ledger):
    await disable(deployment)

    for headers in ({}, ANTHROPIC):
        listed = await call_v1("GET", "/v1/models", secret=key.secret, headers=headers)
        assert [m["id"] for m in listed.json()["data"]] == [granted_deployment.name]

    await enable(deployment)
    listed = await call_v1("GET", "/v1/models", secret=key.secret)
    assert [m["id"] for m in listed.json()["data"]] == sorted([deployment.name, granted_deployment.name])


async def test_retrieving_a_disabled_model_answers_what_calling_it_does(key, other_key, deployment, ledger):
    await disable(deployment)

    response = await call_v1("GET", f"/v1/models/{deployment.name}", secret=key.secret)
    assert response.status == 503 and response.json()["error"]["code"] == "deployment_disabled"
    assert response.headers["x-should-retry"] == "false"
    outsider = await call_v1("GET", f"/v1/models/{deployment.name}", secret=other_key.secret)
    assert outsider.status == 404


async def test_a_record_cached_by_another_version_still_reads():
    fields = {
        "id": 1,
        "name": "m",
        "org_id": 2,
        "upstream_model": "",
        "price_input_micros": 0,
        "price_output_micros": 0,
        "created_at": 0.0,
        "granted_orgs": [3],
    }
    older = _from_dict(DeploymentRecord, dict(fields))  # written before `disabled` existed
    assert older.disabled is False and older.granted_orgs == (3,)
    newer = _from_dict(DeploymentRecord, {**fields, "disabled": True, "a_later_field": 1})
    assert newer.disabled is True
