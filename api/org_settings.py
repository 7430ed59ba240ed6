"""`/api/orgs/<org>/settings/`: the organisation's budget, org-wide limits and the limits new keys
start with. Owners and admins read them (members 403); only owners change them (PATCH some, PUT
all). Bounds are the model's; each change is audited with its values before and after
(accounts.org_settings). The org's alert rules are shown alongside and changed at their own
endpoint (`alerts/settings/`)."""

from __future__ import annotations

from django.core.exceptions import ValidationError as DjangoValidationError
from drf_spectacular.utils import extend_schema, extend_schema_field
from rest_framework import serializers
from rest_framework.exceptions import PermissionDenied, ValidationError
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.reverse import reverse
from rest_framework.views import APIView

from accounts.models import Organization, Role
from accounts.org_settings import update_org_settings
from alerts.models import AlertSettings
from billing.queries import month_to_date

from .alerts import AlertSettingsSerializer
from .views import ORG_PARAM, OrgScoped, actor_label


class OrgSettingsSerializer(serializers.ModelSerializer):
    spent_this_month_micros = serializers.SerializerMethodField(
        help_text="This UTC month's spend so far, in micro-USD (read-only)."
    )
    alert_rules = serializers.SerializerMethodField(
        help_text="The alert rules (read-only here; change them at alert_rules_url)."
    )
    alert_rules_url = serializers.SerializerMethodField()

    class Meta:
        model = Organization
        fields = [
            "slug",
            *Organization.SETTINGS_FIELDS,
            "spent_this_month_micros",
            "alert_rules",
            "alert_rules_url",
        ]
        read_only_fields = ["slug"]
        extra_kwargs = {
            "rpm_limit": {"help_text": "Requests per minute for the whole organisation; null for none."},
            "tpm_limit": {"help_text": "Tokens per minute for the whole organisation; null for none."},
            "monthly_budget_micros": {"help_text": "Monthly spend cap in micro-USD; null for none."},
            "default_key_rpm_limit": {"help_text": "Requests per minute a new key gets unless it names its own."},
            "default_key_tpm_limit": {"help_text": "Tokens per minute a new key gets unless it names its own."},
            "default_key_budget_micros": {
                "help_text": "Monthly budget (micro-USD) a new key gets unless it names its own."
            },
        }

    def get_spent_this_month_micros(self, org: Organization) -> int:
        return month_to_date(org)["cost_micros"]

    @extend_schema_field(AlertSettingsSerializer)
    def get_alert_rules(self, org: Organization) -> dict:
        return AlertSettingsSerializer(AlertSettings.for_org(org)).data

    def get_alert_rules_url(self, org: Organization) -> str:
        return reverse("api:alert-settings", kwargs={"org": org.slug}, request=self.context.get("request"))


class OrgSettingsView(OrgScoped, APIView):
    """The organisation's budget, limits and new-key defaults. Owners change them; admins read them."""

    @extend_schema(parameters=[ORG_PARAM], responses=OrgSettingsSerializer)
    def get(self, request: Request, org: str) -> Response:
        return Response(OrgSettingsSerializer(self.org, context={"request": request}).data)

    def _write(self, request: Request, partial: bool) -> Response:
        if self.membership.role != Role.OWNER:
            raise PermissionDenied("Only owners of this organisation can change its settings.")
        serializer = OrgSettingsSerializer(self.org, data=request.data, partial=partial)
        serializer.is_valid(raise_exception=True)
        try:
            update_org_settings(
                org=self.org, actor=request.user, actor_label=actor_label(request), **serializer.validated_data
            )
        except DjangoValidationError as exc:
            raise ValidationError(
                exc.message_dict if hasattr(exc, "error_dict") else {"detail": exc.messages}
            ) from None
        return Response(OrgSettingsSerializer(self.org, context={"request": request}).data)

    @extend_schema(parameters=[ORG_PARAM], request=OrgSettingsSerializer, responses=OrgSettingsSerializer)
    def patch(self, request: Request, org: str) -> Response:
        return self._write(request, partial=True)

    @extend_schema(parameters=[ORG_PARAM], request=OrgSettingsSerializer, responses=OrgSettingsSerializer)
    def put(self, request: Request, org: str) -> Response:
        return self._write(request, partial=False)
