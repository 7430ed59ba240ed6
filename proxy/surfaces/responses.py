"""POST /v1/responses and GET /v1/responses/{id} (OpenAI Responses) on a Chat Completions model."""

from __future__ import annotations

import time

import orjson
from asgiref.sync import sync_to_async
from django.conf import settings
from django.http import HttpResponse, HttpResponseBase

from ..errors import GatewayError, json_response
from ..gateway import RequestScope
from ..models import StoredResponse
from ..stream import EventTranslator
from ..translate import responses
from ..translate.anthropic import estimate_tokens
from ..translate.errors import TranslationError
from ..upstream import upstream_model
from . import native, translated
from .chat import DEFAULT_OUTPUT_RESERVATION

MAX_ID_LENGTH = 64  # the stored id's column; a longer id, or one with a NUL, cannot be ours


def _could_be_stored(response_id: str) -> bool:
    # PostgreSQL refuses a NUL in a text parameter: such an id is answered here, not by the database.
    return len(response_id) <= MAX_ID_LENGTH and "\x00" not in response_id


def _not_found(previous: str, why: str = "not found") -> GatewayError:
    return GatewayError(
        400,
        f"Previous response with id '{previous[:MAX_ID_LENGTH]}' {why}.",
        code="previous_response_not_found",
        param="previous_response_id",
    )


async def _previous_turns(scope: RequestScope, previous: object) -> list[StoredResponse]:
    """The stored conversation `previous_response_id` names, oldest turn first; a 400 if there is none
    the key's org may continue."""
    if not isinstance(previous, str):
        raise GatewayError(400, "'previous_response_id' must be a string.", param="previous_response_id")
    if not _could_be_stored(previous):
        raise _not_found(previous)
    org_id = scope.authenticated_key().org_id
    turns = await sync_to_async(StoredResponse.objects.chain)(org_id=org_id, response_id=previous)
    if not turns:
        raise _not_found(previous)
    last = turns[-1]
    if len(turns) != last.turn or turns[0].previous_response_id:
        # A link is missing (a row deleted by hand): the conversation cannot be replayed faithfully.
        raise _not_found(previous, "is part of a conversation that is no longer stored in full")
    if last.turn >= StoredResponse.MAX_TURNS or last.conversation_bytes + len(scope.request.body) > (
        settings.MAX_BODY_BYTES
    ):
        raise GatewayError(
            400,
            f"The conversation of response '{previous}' is as long as a stored conversation may grow "
            f"({StoredResponse.MAX_TURNS} turns, or {settings.MAX_BODY_BYTES} bytes with this request). "
            "Start a new one: send the conversation as input, without previous_response_id.",
            code="context_length_exceeded",
            param="previous_response_id",
        )
    return turns


def _store(scope: RequestScope, previous: StoredResponse | None, translator, info) -> None:
    final = translator.final_response()
    key = scope.authenticated_key()
    items = info.input_items + translator.output_items()
    StoredResponse.objects.create(
        id=final["id"],
        org_id=key.org_id,
        api_key_id=key.id,
        model=scope.resolved_deployment().name,
        items=items,
        response=final,
        previous_response_id=previous.id if previous else "",
        thread=previous.thread if previous else final["id"],
        turn=previous.turn + 1 if previous else 1,
        conversation_bytes=(previous.conversation_bytes if previous else 0) + len(orjson.dumps(items)),
    )


def _error_code(code: str) -> str:
    return "server_error"


async def create_response(scope: RequestScope) -> HttpResponseBase:
    body = scope.body
    await scope.resolve_model(body.get("model"))
    if await native.speaks(scope, "responses"):
        return await native.create_response(scope)
    previous: StoredResponse | None = None
    history: list[dict] = []
    if body.get("previous_response_id") is not None:
        turns = await _previous_turns(scope, body["previous_response_id"])
        previous = turns[-1]
        history = [item for stored in turns for item in stored.items]
    try:
        chat_body, info = responses.validate_and_translate_request(
            body, upstream_model=upstream_model(scope), history=history
        )
    except TranslationError as exc:
        raise GatewayError(400, exc.message, param=exc.param, code="invalid_value") from None
    # Hosted tools (web_search, file_search, …) need a server that runs them: the model is asked
    # without them, and the client told which were left out rather than refused.
    translated.omit_tools(scope, info.omitted_tools)
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
            await sync_to_async(_store)(scope, previous, inner, info)

    translator = EventTranslator(inner, keepalive=inner.keepalive, error_kind=_error_code, on_complete=store)
    return await translated.run(scope, chat_body, translator, stream=info.stream, final=inner.final_response)


def _load_response(org_id: int, response_id: str) -> dict | None:
    return StoredResponse.objects.for_org(org_id).filter(pk=response_id).values_list("response", flat=True).first()


async def get_response(scope: RequestScope, response_id: str) -> HttpResponse:
    stored = None
    if _could_be_stored(response_id):
        stored = await sync_to_async(_load_response)(scope.authenticated_key().org_id, response_id)
    if stored is None:
        shown = response_id[:MAX_ID_LENGTH]
        raise GatewayError(404, f"No response found with id '{shown}'.", code="not_found", param="response_id")
    return json_response(stored)
