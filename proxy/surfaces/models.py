"""GET /v1/models and /v1/models/{id}: exactly the deployments the key may call. A disabled one is left
out of the list (a model picker must not offer it) and retrieving it answers what calling it does:
503 `deployment_disabled`."""

from __future__ import annotations

from datetime import UTC, datetime

from asgiref.sync import sync_to_async
from django.http import HttpResponse

from deployments.models import Deployment

from ..access import DeploymentRecord, KeyRecord, deployment_disabled, get_deployment, key_allows
from ..errors import GatewayError, json_response
from ..gateway import RequestScope
from ..tunnel import presence


def _visible_names(key: KeyRecord) -> list[str]:
    qs = Deployment.objects.usable_by(key.org_id).enabled()
    if not key.all_models:
        qs = qs.filter(id__in=key.allowed)
    return sorted(set(qs.values_list("name", flat=True)))


async def _records(key: KeyRecord) -> list[DeploymentRecord]:
    names = await sync_to_async(_visible_names)(key)
    records = [await get_deployment(name) for name in names]
    # The same rule as every request's access check, so the list and a 403 never disagree.
    return [r for r in records if r is not None and key_allows(key, r) and not r.disabled]


async def _entry(scope: RequestScope, record: DeploymentRecord) -> dict:
    online = bool(await presence.live_connectors(record.pool))
    if scope.anthropic:
        return {
            "type": "model",
            "id": record.name,
            "display_name": record.name,
            "created_at": datetime.fromtimestamp(record.created_at, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "online": online,
        }
    return {
        "id": record.name,
        "object": "model",
        "created": int(record.created_at),
        "owned_by": "tokios",
        "online": online,
    }


async def list_models(scope: RequestScope) -> HttpResponse:
    entries = [await _entry(scope, r) for r in await _records(scope.authenticated_key())]
    if scope.anthropic:
        return json_response(
            {
                "data": entries,
                "has_more": False,
                "first_id": entries[0]["id"] if entries else None,
                "last_id": entries[-1]["id"] if entries else None,
            }
        )
    return json_response({"object": "list", "data": entries})


async def get_model(scope: RequestScope, model_id: str) -> HttpResponse:
    record = await get_deployment(model_id)
    if record is None or not key_allows(scope.authenticated_key(), record):
        raise GatewayError(
            404,
            f"The model `{model_id}` does not exist or you do not have access to it.",
            code="model_not_found",
            param="model",
        )
    if record.disabled:
        denied = deployment_disabled(model_id)
        raise GatewayError(denied.status, denied.message, code=denied.code, param=denied.param, headers=denied.headers)
    return json_response(await _entry(scope, record))
