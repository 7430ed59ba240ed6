"""A deployment's state through the management API: disable and enable (`POST …/disable/`,
`…/enable/`), delete (`DELETE`, answered with what went with it), and the connect history with uptime
(`GET …/history/`). The same actions as the dashboard (deployments.lifecycle), audited; owners and
admins only, another org's deployment is a 404."""

from __future__ import annotations

from django.utils import timezone
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_view
from rest_framework import mixins, serializers
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from alerts.connector_history import recent_events, uptimes
from deployments.lifecycle import delete_deployment, disable_deployment, enable_deployment
from proxy.tunnel import presence

from . import views
from .views import ORG_PARAM, actor_label

MAX_HISTORY = 500


class DeletionSerializer(serializers.Serializer):
    name = serializers.CharField(help_text="The deleted deployment's name (now free).")
    active_tokens = serializers.IntegerField(help_text="Connector tokens revoked; their live connectors closed.")
    token_prefixes = serializers.ListField(child=serializers.CharField())
    granted_orgs = serializers.ListField(child=serializers.CharField(), help_text="Organisations that lost access.")
    limited_keys = serializers.IntegerField(help_text="Keys whose model list included it (they lose it).")
    stranded_keys = serializers.IntegerField(help_text="Of those, keys left able to call no model.")
    stranded_key_names = serializers.ListField(child=serializers.CharField())
    served_deployments = serializers.ListField(
        child=serializers.CharField(), help_text="Deployments it served (`served_by`): offline until given another."
    )


class HistoryEventSerializer(serializers.Serializer):
    kind = serializers.CharField(help_text="connected or disconnected")
    at = serializers.DateTimeField()
    connector_id = serializers.CharField()
    token_label = serializers.CharField()
    close_code = serializers.IntegerField(allow_null=True, help_text="WebSocket close code of a disconnect.")
    cause = serializers.CharField(help_text="The close code (or reason) in words; empty for a connect.")


class UptimeSerializer(serializers.Serializer):
    window = serializers.CharField(source="label", help_text="24h or 7d")
    measured_seconds = serializers.SerializerMethodField(help_text="The part of the window the deployment existed.")
    up_seconds = serializers.SerializerMethodField()
    percent = serializers.FloatField(allow_null=True)
    approximate = serializers.BooleanField()

    def get_measured_seconds(self, uptime) -> int:
        return int(uptime.measured.total_seconds())

    def get_up_seconds(self, uptime) -> int:
        return int(uptime.up.total_seconds())


class HistorySerializer(serializers.Serializer):
    uptime = UptimeSerializer(many=True)
    events = HistoryEventSerializer(many=True)


class HistoryQuery(serializers.Serializer):
    limit = serializers.IntegerField(min_value=1, max_value=MAX_HISTORY, default=50)


DETAIL = [ORG_PARAM]


@extend_schema_view(
    destroy=extend_schema(parameters=DETAIL, responses=DeletionSerializer),
    disable=extend_schema(parameters=DETAIL, request=None),
    enable=extend_schema(parameters=DETAIL, request=None),
    history=extend_schema(
        parameters=[*DETAIL, OpenApiParameter("limit", int, description=f"Events, newest first (1-{MAX_HISTORY}).")],
        responses=HistorySerializer,
    ),
)
class DeploymentViewSet(views.DeploymentViewSet, mixins.DestroyModelMixin):
    """Deployments owned by the org, with their live connectors and the models those announce
    (`connector_models`). Names cannot change; prices, `surface_mode`, `served_by` and `fallbacks` can.
    A deployment with `served_by` set is served by that deployment's connectors (one connector, many
    models): it has no connector tokens of its own, and its `online`/`connectors` are its server's. A
    disabled deployment (`disabled_at` set) answers /v1 with 503 `deployment_disabled` and keeps its
    connectors; deleting one revokes its connector tokens, removes its grants and its place in keys'
    model lists, and keeps its usage history."""

    def destroy(self, request: Request, *args, **kwargs) -> Response:
        impact = delete_deployment(deployment=self.get_object(), actor=request.user, actor_label=actor_label(request))
        return Response(DeletionSerializer(impact).data)

    @action(detail=True, methods=["post"])
    def disable(self, request: Request, *args, **kwargs) -> Response:
        deployment = self.get_object()
        disable_deployment(deployment=deployment, actor=request.user, actor_label=actor_label(request))
        return Response(self.get_serializer(deployment).data)

    @action(detail=True, methods=["post"])
    def enable(self, request: Request, *args, **kwargs) -> Response:
        deployment = self.get_object()
        enable_deployment(deployment=deployment, actor=request.user, actor_label=actor_label(request))
        return Response(self.get_serializer(deployment).data)

    @action(detail=True, methods=["get"])
    def history(self, request: Request, *args, **kwargs) -> Response:
        """Connects and disconnects (with their close codes in words), newest first, and uptime over
        the last 24 hours and 7 days (a served deployment: its server's)."""
        query = HistoryQuery(data=request.query_params)
        query.is_valid(raise_exception=True)
        # A served deployment's connectors are its server's.
        deployment = self.get_object()
        deployment = deployment.served_by or deployment
        live = presence.live_connectors_sync(deployment.id)
        data = {
            "uptime": uptimes(deployment, now=timezone.now(), live=live),
            "events": recent_events(deployment, limit=query.validated_data["limit"]),
        }
        return Response(HistorySerializer(data).data)
