"""The management API for alerts (`/api/orgs/{org}/alerts/…`): the org's alert settings, its webhook
endpoints (the signing secret is in the create and rotate responses only), the alerts raised, and
the delivery log. Owners and admins only; another org's slug or id is a 404."""

from __future__ import annotations

from django.core.exceptions import ValidationError as DjangoValidationError
from drf_spectacular.utils import extend_schema, extend_schema_view
from rest_framework import mixins, serializers, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from alerts.actions import (
    SETTINGS_FIELDS,
    create_endpoint,
    delete_endpoint,
    rotate_secret,
    send_test,
    update_endpoint,
    update_settings,
)
from alerts.models import (
    MAX_THRESHOLD_PERCENT,
    MAX_THRESHOLDS,
    Alert,
    AlertSettings,
    Delivery,
    DeliveryAttempt,
    WebhookEndpoint,
    validate_thresholds,
)
from alerts.webhooks import MAX_URL_CHARS

from .views import ORG_PARAM, OrgScoped, actor_label


def _bad_request(exc: DjangoValidationError):
    detail = exc.message_dict if hasattr(exc, "error_dict") else {"detail": exc.messages}
    raise ValidationError(detail) from None


# --- serializers -------------------------------------------------------------------------------------


class AlertSettingsSerializer(serializers.ModelSerializer):
    budget_thresholds = serializers.ListField(
        child=serializers.IntegerField(min_value=1, max_value=MAX_THRESHOLD_PERCENT),
        max_length=MAX_THRESHOLDS,
        allow_empty=True,
        help_text="Percentages of a monthly budget that raise an alert once a month, e.g. [50, 80, 100].",
    )

    class Meta:
        model = AlertSettings
        fields = list(SETTINGS_FIELDS)

    def validate_budget_thresholds(self, value: list[int]) -> list[int]:
        try:
            validate_thresholds(value)
        except DjangoValidationError as exc:
            raise serializers.ValidationError(exc.messages) from None
        return sorted(value)


class WebhookEndpointSerializer(serializers.ModelSerializer):
    url = serializers.CharField(max_length=MAX_URL_CHARS, help_text="https://, on a public address.")
    prefix = serializers.CharField(read_only=True, help_text="The start of the signing secret.")

    class Meta:
        model = WebhookEndpoint
        fields = ["id", "url", "description", "enabled", "prefix", "created_at", "rotated_at"]
        read_only_fields = ["created_at", "rotated_at"]


class WebhookEndpointCreatedSerializer(WebhookEndpointSerializer):
    secret = serializers.CharField(read_only=True, help_text="Shown once: Tokios keeps no copy it could show again.")

    class Meta(WebhookEndpointSerializer.Meta):
        fields = [*WebhookEndpointSerializer.Meta.fields, "secret"]


class AlertSerializer(serializers.ModelSerializer):
    event = serializers.CharField(read_only=True)

    class Meta:
        model = Alert
        fields = ["id", "event", "kind", "status", "subject", "title", "data", "created_at"]


class DeliveryAttemptSerializer(serializers.ModelSerializer):
    class Meta:
        model = DeliveryAttempt
        fields = ["number", "started_at", "duration_ms", "ok", "http_status", "error", "response_excerpt"]


class DeliverySerializer(serializers.ModelSerializer):
    event = serializers.CharField(source="alert.event", read_only=True)
    title = serializers.CharField(source="alert.title", read_only=True)
    attempt_log = DeliveryAttemptSerializer(many=True, read_only=True)

    class Meta:
        model = Delivery
        fields = [
            "id",
            "alert",
            "event",
            "title",
            "channel",
            "endpoint",
            "status",
            "attempts",
            "next_attempt_at",
            "delivered_at",
            "created_at",
            "attempt_log",
        ]


class TestSentSerializer(serializers.Serializer):
    alert = serializers.IntegerField()
    delivery = serializers.IntegerField()


# --- views -------------------------------------------------------------------------------------------


class AlertSettingsView(OrgScoped, APIView):
    """The org's alert rules (defaults until changed). PATCH changes some, PUT all."""

    @extend_schema(parameters=[ORG_PARAM], responses=AlertSettingsSerializer)
    def get(self, request: Request, org: str) -> Response:
        return Response(AlertSettingsSerializer(AlertSettings.for_org(self.org)).data)

    def _write(self, request: Request, partial: bool) -> Response:
        serializer = AlertSettingsSerializer(AlertSettings.for_org(self.org), data=request.data, partial=partial)
        serializer.is_valid(raise_exception=True)
        try:
            rules = update_settings(
                org=self.org, actor=request.user, actor_label=actor_label(request), **serializer.validated_data
            )
        except DjangoValidationError as exc:
            _bad_request(exc)
        return Response(AlertSettingsSerializer(rules).data)

    @extend_schema(parameters=[ORG_PARAM], request=AlertSettingsSerializer, responses=AlertSettingsSerializer)
    def put(self, request: Request, org: str) -> Response:
        return self._write(request, partial=False)

    @extend_schema(parameters=[ORG_PARAM], request=AlertSettingsSerializer, responses=AlertSettingsSerializer)
    def patch(self, request: Request, org: str) -> Response:
        return self._write(request, partial=True)


@extend_schema_view(
    list=extend_schema(parameters=[ORG_PARAM]),
    retrieve=extend_schema(parameters=[ORG_PARAM]),
    create=extend_schema(parameters=[ORG_PARAM], responses={201: WebhookEndpointCreatedSerializer}),
    partial_update=extend_schema(parameters=[ORG_PARAM]),
    update=extend_schema(parameters=[ORG_PARAM]),
    destroy=extend_schema(parameters=[ORG_PARAM]),
    rotate=extend_schema(parameters=[ORG_PARAM], request=None, responses=WebhookEndpointCreatedSerializer),
    test=extend_schema(parameters=[ORG_PARAM], request=None, responses={202: TestSentSerializer}),
)
class WebhookEndpointViewSet(OrgScoped, viewsets.ModelViewSet):
    """Webhook endpoints (at most 10). Alerts are POSTed as JSON signed with
    `Tokios-Signature: t=<unix>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`. `POST …/rotate/` makes a
    new secret (the old one signs too for 24 hours); `POST …/test/` sends a test alert."""

    serializer_class = WebhookEndpointSerializer

    def get_queryset(self):
        return self.scoped(WebhookEndpoint)

    def create(self, request: Request, *args, **kwargs) -> Response:
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        try:
            endpoint, secret = create_endpoint(org=self.org, created_by=request.user, **serializer.validated_data)
        except DjangoValidationError as exc:
            _bad_request(exc)
        endpoint.secret = secret
        response = Response(WebhookEndpointCreatedSerializer(endpoint).data, status=201)
        response["Cache-Control"] = "no-store, private"
        return response

    def update(self, request: Request, *args, **kwargs) -> Response:
        endpoint = self.get_object()
        serializer = self.get_serializer(endpoint, data=request.data, partial=kwargs.get("partial", False))
        serializer.is_valid(raise_exception=True)
        try:
            update_endpoint(endpoint=endpoint, **serializer.validated_data)
        except DjangoValidationError as exc:
            _bad_request(exc)
        return Response(self.get_serializer(endpoint).data)

    def perform_destroy(self, endpoint: WebhookEndpoint) -> None:
        delete_endpoint(endpoint=endpoint)

    @action(detail=True, methods=["post"])
    def rotate(self, request: Request, *args, **kwargs) -> Response:
        endpoint, secret = rotate_secret(endpoint=self.get_object())
        endpoint.secret = secret
        response = Response(WebhookEndpointCreatedSerializer(endpoint).data)
        response["Cache-Control"] = "no-store, private"
        return response

    @action(detail=True, methods=["post"])
    def test(self, request: Request, *args, **kwargs) -> Response:
        raised = send_test(endpoint=self.get_object())
        return Response({"alert": raised.alert.pk, "delivery": raised.deliveries[0]}, status=202)


@extend_schema_view(list=extend_schema(parameters=[ORG_PARAM]), retrieve=extend_schema(parameters=[ORG_PARAM]))
class AlertViewSet(OrgScoped, mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """The alerts raised for the org, newest first (kept ALERTS_RETENTION_DAYS)."""

    serializer_class = AlertSerializer

    def get_queryset(self):
        return self.scoped(Alert)


@extend_schema_view(list=extend_schema(parameters=[ORG_PARAM]), retrieve=extend_schema(parameters=[ORG_PARAM]))
class DeliveryViewSet(OrgScoped, mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """The delivery log: each alert's webhook and e-mail deliveries, with every attempt."""

    serializer_class = DeliverySerializer

    def get_queryset(self):
        return self.scoped(Delivery).select_related("alert").prefetch_related("attempt_log")
