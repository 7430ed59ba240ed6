"""POST /v1/responses and GET /v1/responses/{id} (OpenAI Responses) on a Chat Completions model."""

from __future__ import annotations

import time

import orjson
from asgiref.sync import sync_to_async
from django.http import HttpResponse

from ..errors import GatewayError, json_response
from ..gateway import RequestScope
from ..models import StoredResponse
from ..stream import EventTranslator
from ..translate import responses
from ..translate.anthropic import estimate_tokens
from ..translate.errors import TranslationError
from ..upstream import upstream_model
from . import translated
from .chat import DEFAULT_OUTPUT_RESERVATION


def _load_history(org_id: int, response_id: str) -> list[dict] | None:
    row = StoredResponse.objects.for_org(org_id).filter(pk=response_id).values_list("items", flat=True).first()
    return row


def _store(scope: RequestScope, history: list[dict], translator, info) -> None:
    final = translator.final_response()
    StoredResponse.objects.create(
        id=final["id"],
        org_id=scope.key.org_id,
        api_key_id=scope.key.id,
        model=scope.deployment.name,
        items=history + info.input_items + translator.output_items(),
        response=final,
    )


def _error_code(code: str) -> str:
    return "server_error"


async def create_response(scope: RequestScope) -> HttpResponse:
    body = scope.body
    await scope.resolve_model(body.get("model"))
    history: list[dict] = []
    previous = body.get("previous_response_id")
    if previous is not None:
        if not isinstance(previous, str):
            raise GatewayError(400, "'previous_response_id' must be a string.", param="previous_response_id")
        found = await sync_to_async(_load_history)(scope.key.org_id, previous)
        if found is None:
            raise GatewayError(
                400,
                f"Previous response with id '{previous}' not found.",
                code="previous_response_not_found",
                param="previous_response_id",
            )
        history = found
    try:
        chat_body, info = responses.validate_and_translate_request(
            body, upstream_model=upstream_model(scope), history=history
        )
    except TranslationError as exc:
        raise GatewayError(400, exc.message, param=exc.param, code="invalid_value") from None
    prompt_estimate = estimate_tokens(orjson.dumps(chat_body["messages"]).decode())
    await scope.check_limits(prompt_estimate + (info.max_output_tokens or DEFAULT_OUTPUT_RESERVATION))
    inner = responses.ResponsesStreamTranslator(
        info,
        response_id="resp_" + scope.request_id[4:],
        created_at=int(time.time()),
        input_tokens_hint=prompt_estimate,
        emit_events=info.stream,
    )

    async def store() -> None:
        # Stored before the terminal event goes out, so a client may chain on it at once.
        if info.store:
            await sync_to_async(_store)(scope, history, inner, info)

    translator = EventTranslator(inner, keepalive=inner.keepalive, error_kind=_error_code, on_complete=store)
    return await translated.run(scope, chat_body, translator, stream=info.stream, final=inner.final_response)


def _load_response(org_id: int, response_id: str) -> dict | None:
    return StoredResponse.objects.for_org(org_id).filter(pk=response_id).values_list("response", flat=True).first()


async def get_response(scope: RequestScope, response_id: str) -> HttpResponse:
    stored = await sync_to_async(_load_response)(scope.key.org_id, response_id)
    if stored is None:
        raise GatewayError(404, f"No response found with id '{response_id}'.", code="not_found", param="response_id")
    return json_response(stored)
