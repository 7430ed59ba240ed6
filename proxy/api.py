"""The /v1 API: django-ninja routes, each a thin call into `gateway.handle` with its surface."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from ninja import NinjaAPI

from . import gateway
from .surfaces import chat, embeddings, messages, models, responses

api = NinjaAPI(title="Tokios /v1", version="1", urls_namespace="v1", docs_url=None, openapi_url=None)


def is_anthropic(request: HttpRequest) -> bool:
    return "anthropic-version" in request.headers


@api.post("/chat/completions")
async def chat_completions(request: gateway.ScopedRequest):
    return await gateway.handle(request, "chat", chat.chat_completions)


@api.post("/embeddings")
async def create_embeddings(request: gateway.ScopedRequest):
    return await gateway.handle(request, "embeddings", embeddings.create_embeddings)


@api.get("/models")
async def list_models(request: gateway.ScopedRequest):
    return await gateway.handle(
        request, "models", models.list_models, anthropic=is_anthropic(request), parse_body=False
    )


@api.get("/models/{model_id}")
async def get_model(request: gateway.ScopedRequest, model_id: str):
    async def handler(scope: gateway.RequestScope) -> HttpResponse:
        return await models.get_model(scope, model_id)

    return await gateway.handle(request, "models", handler, anthropic=is_anthropic(request), parse_body=False)


@api.post("/messages")
async def create_message(request: gateway.ScopedRequest):
    return await gateway.handle(request, "messages", messages.create_message, anthropic=True)


@api.post("/messages/count_tokens")
async def count_tokens(request: gateway.ScopedRequest):
    return await gateway.handle(request, "count_tokens", messages.count_tokens, anthropic=True)


@api.post("/responses")
async def create_response(request: gateway.ScopedRequest):
    return await gateway.handle(request, "responses", responses.create_response)


@api.get("/responses/{response_id}")
async def get_response(request: gateway.ScopedRequest, response_id: str):
    async def handler(scope: gateway.RequestScope) -> HttpResponse:
        return await responses.get_response(scope, response_id)

    return await gateway.handle(request, "responses", handler, parse_body=False)
