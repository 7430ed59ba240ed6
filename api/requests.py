"""`GET /api/orgs/{org}/requests/`: the request log, as the dashboard shows it (billing.request_log):
the same filters, the same scope (owners and admins: the org's requests; members: their own keys'),
keyset pages newest first with `next` (older) and `previous` (newer) links."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.utils.urls import remove_query_param, replace_query_param
from rest_framework.views import APIView

from billing.models import MAX_REQUESTED_MODEL_CHARS, UsageEvent
from billing.request_log import MAX_PAGE_SIZE, Cursor, RequestLogFilter

from .views import ORG_PARAM, OrgScoped


class RequestQuery(serializers.Serializer):
    """The query parameters (documentation: billing.request_log.RequestLogFilter checks them)."""

    request_id = serializers.CharField(required=False, max_length=64, help_text="One request, by its exact id.")
    key = serializers.IntegerField(required=False, help_text="An API key id you may see.")
    model = serializers.CharField(
        required=False, max_length=MAX_REQUESTED_MODEL_CHARS, help_text="The model name the client sent (exact)."
    )
    status = serializers.IntegerField(required=False, min_value=100, max_value=599, help_text="An HTTP status.")
    errors_only = serializers.BooleanField(
        required=False, help_text="Only requests answered with a status of 400 or more."
    )
    since = serializers.DateTimeField(required=False, help_text="Requests at or after this instant (ISO 8601, UTC).")
    until = serializers.DateTimeField(required=False, help_text="Requests before this instant (ISO 8601, UTC).")
    limit = serializers.IntegerField(
        required=False, min_value=1, max_value=MAX_PAGE_SIZE, help_text="Requests per page (default 50)."
    )
    before = serializers.CharField(required=False, max_length=40, help_text="A cursor from a `next` link.")
    after = serializers.CharField(required=False, max_length=40, help_text="A cursor from a `previous` link.")


class RequestEventSerializer(serializers.ModelSerializer):
    key = serializers.IntegerField(source="api_key_id", allow_null=True, help_text="The API key's id.")
    key_name = serializers.CharField(source="api_key.name", allow_null=True, default=None)
    key_prefix = serializers.CharField(source="api_key.prefix", allow_null=True, default=None)
    model = serializers.CharField(source="model_name", help_text="The model name the client sent.")
    deployment = serializers.CharField(
        source="deployment.name",
        allow_null=True,
        default=None,
        help_text="The deployment that served it (a fallback's when `served_by_fallback`); null: none has that model.",
    )
    retried = serializers.BooleanField(
        help_text="Sent a second time, to another connector, after the first failed before answering."
    )
    served_by_fallback = serializers.BooleanField(
        help_text="Served by a fallback of the model the client named (`deployment`)."
    )

    class Meta:
        model = UsageEvent
        fields = [
            "request_id",
            "created_at",
            "key",
            "key_name",
            "key_prefix",
            "model",
            "deployment",
            "surface",
            "status_code",
            "error_code",
            "input_tokens",
            "output_tokens",
            "usage_estimated",
            "cost_micros",
            "ttft_ms",
            "latency_ms",
            "queue_wait_ms",
            "streamed",
            "cancelled",
            "connector_id",
            "retried",
            "served_by_fallback",
        ]


class RequestPageSerializer(serializers.Serializer):
    next = serializers.URLField(allow_null=True, help_text="Older requests (null: none).")
    previous = serializers.URLField(allow_null=True, help_text="Newer requests (null: this is the newest page).")
    results = RequestEventSerializer(many=True)


def _page_url(request: Request, name: str, cursor: Cursor | None) -> str | None:
    if cursor is None:
        return None
    url = request.build_absolute_uri()
    for param in ("before", "after"):
        url = remove_query_param(url, param)
    return replace_query_param(url, name, str(cursor))


class RequestLogView(OrgScoped, APIView):
    """The request log: one row per /v1 request, newest first. Owners and admins see the org's
    requests; members the requests of the keys they created. Kept as long as usage events are
    (`TOKIOS_USAGE_RETENTION_DAYS`)."""

    manage = False

    @extend_schema(parameters=[ORG_PARAM, RequestQuery], responses=RequestPageSerializer)
    def get(self, request: Request, org: str) -> Response:
        form = RequestLogFilter(request.query_params, membership=self.membership)
        page = form.page() if form.is_valid() else None
        if page is None:
            raise ValidationError(form.errors.get_json_data())
        body = {
            "next": _page_url(request, "before", page.older),
            "previous": _page_url(request, "after", page.newer),
            "results": page.events,
        }
        return Response(RequestPageSerializer(body).data)
