"""The management API. Every org-scoped view resolves the caller's membership from the URL's org
slug (another org → 404), refuses members on management endpoints (403), and writes through the
same action functions as the dashboard."""

from __future__ import annotations

from datetime import date

from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404
from django.shortcuts import get_object_or_404
from django.urls import reverse
from django.utils import timezone
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_view
from rest_framework import mixins, serializers, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import PermissionDenied, ValidationError
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.reverse import reverse as api_reverse
from rest_framework.views import APIView

from accounts.actions import change_role, remove_member, revoke_api_key
from accounts.invitations import invite_member_with_link, revoke_invitation
from accounts.models import ApiKey, Invitation, Membership, PersonalAccessToken
from accounts.tenancy import (
    acting_membership,
    acting_memberships,
    can_manage,
    check_can_manage_member,
    owned_or_404,
    scoped,
)
from billing.forms import Preset, UsageFilterForm
from billing.models import Statement
from billing.queries import usage_series
from deployments.actions import (
    create_api_key,
    create_connector_token,
    create_deployment,
    grant_model,
    revoke_connector_token,
    revoke_grant,
    update_api_key,
    update_deployment,
)
from deployments.connector import connector_command, server_url
from deployments.models import ConnectorToken, Deployment, ModelGrant

from . import serializers as s
from .keys import KeyListQuery, KeyManagement

ORG_PARAM = OpenApiParameter("org", str, OpenApiParameter.PATH, description="The organisation's slug.")
TOTALS = ("requests", "errors", "input_tokens", "output_tokens", "cost_micros")


def request_token(request: Request) -> PersonalAccessToken | None:
    """The personal access token the request authenticated with; None for the dashboard session."""
    return request.auth if isinstance(request.auth, PersonalAccessToken) else None


def actor_label(request: Request) -> str:
    token = request_token(request)
    return token.actor_label if token is not None else ""


def _raise_validation(exc: DjangoValidationError):
    raise ValidationError({"detail": exc.messages}) from None


def _raise_field_validation(exc: DjangoValidationError):
    """A model layer's error by the fields it names (`served_by`, `fallbacks`…), else as `detail`."""
    if hasattr(exc, "error_dict"):
        raise ValidationError(exc.message_dict) from None
    _raise_validation(exc)


class OrgScoped:
    """Resolves `self.membership` / `self.org` from the `org` URL kwarg before any handler runs."""

    manage = True  # owners and admins only; members get 403
    lookup_value_converter = "int"

    def check_permissions(self, request):
        super().check_permissions(request)
        if getattr(self, "swagger_fake_view", False):
            return
        # A token's own org only, at its effective role; any other slug is a 404, as for an outsider.
        membership = acting_membership(request.user, str(self.kwargs.get("org")), request_token(request))
        if membership is None:
            raise Http404("No such organisation.")
        self.membership = membership
        self.org = membership.org
        if self.manage and not can_manage(self.membership):
            raise PermissionDenied("Only owners and admins of this organisation can do this.")

    def get_serializer_context(self):
        context = super().get_serializer_context()
        context["org"] = getattr(self, "org", None)
        return context

    def scoped(self, model):
        if getattr(self, "swagger_fake_view", False):
            return model.objects.none()
        return scoped(model, self.org)


class ApiRoot(APIView):
    """Links to everything; start at `orgs/`."""

    @extend_schema(exclude=True)
    def get(self, request: Request) -> Response:
        return Response(
            {
                "orgs": api_reverse("api:orgs", request=request),
                "schema": api_reverse("api:schema", request=request),
                "docs": api_reverse("api:docs", request=request),
                "authentication": "Session, or 'Authorization: Bearer pat-tokios-…' from your profile page "
                "(a token acts in one organisation, at its role there; tokens are made on the profile page only).",
                "org_endpoints": [
                    "orgs/{org}/keys/",
                    "orgs/{org}/deployments/",
                    "orgs/{org}/deployments/{id}/tokens/",
                    "orgs/{org}/deployments/{id}/grants/",
                    "orgs/{org}/members/",
                    "orgs/{org}/invitations/",
                    "orgs/{org}/settings/",
                    "orgs/{org}/usage/",
                    "orgs/{org}/usage/breakdown/",
                    "orgs/{org}/requests/",
                    "orgs/{org}/statements/",
                ],
            }
        )


class OrgList(APIView):
    """The organisations you belong to, with your role in each; with a token, its one organisation
    and the role it acts with there."""

    @extend_schema(responses=s.OrgSerializer(many=True))
    def get(self, request: Request) -> Response:
        return Response(s.OrgSerializer(acting_memberships(request.user, request_token(request)), many=True).data)


@extend_schema_view(
    list=extend_schema(parameters=[ORG_PARAM, KeyListQuery]),
    retrieve=extend_schema(parameters=[ORG_PARAM]),
    create=extend_schema(parameters=[ORG_PARAM], responses={201: s.ApiKeyCreatedSerializer}),
    partial_update=extend_schema(parameters=[ORG_PARAM]),
    update=extend_schema(parameters=[ORG_PARAM]),
    revoke=extend_schema(parameters=[ORG_PARAM], request=None),
)
class ApiKeyViewSet(
    KeyManagement,  # filters, usage, rotate, pause/resume, expiry: api/keys.py
    OrgScoped,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    mixins.UpdateModelMixin,
    viewsets.GenericViewSet,
):
    """API keys. The secret is in the create response only (and a rotation's). `POST …/revoke/` revokes
    (there is no delete: revoked keys stay listed for the audit trail; `?status=current` leaves them out)."""

    serializer_class = s.ApiKeySerializer

    def get_queryset(self):
        return self.scoped(ApiKey).prefetch_related("allowed_deployments")

    def create(self, request: Request, *args, **kwargs) -> Response:
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        # A limit the request does not name is the org's default for new keys; an explicit null is none.
        limits = {**self.org.key_defaults(), **{name: data[name] for name in ApiKey.LIMIT_FIELDS if name in data}}
        try:
            key, secret = create_api_key(
                org=self.org,
                name=data["name"],
                created_by=request.user,
                actor_label=actor_label(request),
                deployments=data.get("allowed_deployments") or [],
                expires_at=data.get("expires_at"),
                use_fallbacks=data.get("use_fallbacks", False),
                **limits,
            )
        except DjangoValidationError as exc:
            _raise_validation(exc)
        key.secret = secret
        return Response(s.ApiKeyCreatedSerializer(key, context=self.get_serializer_context()).data, status=201)

    def update(self, request: Request, *args, **kwargs) -> Response:
        key = self.get_object()
        if key.is_revoked:
            raise ValidationError({"detail": ["A revoked key cannot be changed."]})
        serializer = self.get_serializer(key, data=request.data, partial=kwargs.get("partial", False))
        serializer.is_valid(raise_exception=True)
        changes = dict(serializer.validated_data)
        if "allowed_deployments" in changes:
            changes["deployments"] = list(changes.pop("allowed_deployments"))
        try:
            update_api_key(key=key, actor=request.user, actor_label=actor_label(request), **changes)
        except DjangoValidationError as exc:
            _raise_validation(exc)
        key.refresh_from_db()
        return Response(self.get_serializer(key).data)

    @action(detail=True, methods=["post"])
    def revoke(self, request: Request, *args, **kwargs) -> Response:
        key = revoke_api_key(key=self.get_object(), actor=request.user, actor_label=actor_label(request))
        return Response(self.get_serializer(key).data)


@extend_schema_view(
    list=extend_schema(parameters=[ORG_PARAM]),
    retrieve=extend_schema(parameters=[ORG_PARAM]),
    create=extend_schema(parameters=[ORG_PARAM]),
    partial_update=extend_schema(parameters=[ORG_PARAM], request=s.DeploymentUpdateSerializer),
    update=extend_schema(parameters=[ORG_PARAM], request=s.DeploymentUpdateSerializer),
)
class DeploymentViewSet(
    OrgScoped,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    mixins.UpdateModelMixin,
    viewsets.GenericViewSet,
):
    """Deployments owned by the org, with their live connectors. Names cannot change; prices can."""

    serializer_class = s.DeploymentSerializer

    def get_queryset(self):
        return self.scoped(Deployment)

    def create(self, request: Request, *args, **kwargs) -> Response:
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        try:
            deployment = create_deployment(
                org=self.org, created_by=request.user, actor_label=actor_label(request), **serializer.validated_data
            )
        except DjangoValidationError as exc:
            _raise_field_validation(exc)
        return Response(self.get_serializer(deployment).data, status=201)

    def update(self, request: Request, *args, **kwargs) -> Response:
        deployment = self.get_object()
        serializer = s.DeploymentUpdateSerializer(
            deployment,
            data=request.data,
            partial=kwargs.get("partial", False),
            context=self.get_serializer_context(),
        )
        serializer.is_valid(raise_exception=True)
        try:
            update_deployment(
                deployment=deployment,
                actor=request.user,
                actor_label=actor_label(request),
                **serializer.validated_data,
            )
        except DjangoValidationError as exc:
            _raise_field_validation(exc)
        return Response(self.get_serializer(deployment).data)


class DeploymentChild(OrgScoped):
    """Objects under `deployments/<deployment_pk>/`: the deployment must belong to the org."""

    def check_permissions(self, request):
        super().check_permissions(request)
        if not getattr(self, "swagger_fake_view", False):
            self.parent = owned_or_404(Deployment, self.org, pk=self.kwargs["deployment_pk"])

    def deployment(self) -> Deployment:
        return self.parent

    def get_queryset(self):
        return self.scoped(self.model).filter(deployment_id=self.kwargs.get("deployment_pk"))


DEPLOYMENT_PARAMS = [ORG_PARAM, OpenApiParameter("deployment_pk", int, OpenApiParameter.PATH)]


@extend_schema_view(
    list=extend_schema(parameters=DEPLOYMENT_PARAMS),
    retrieve=extend_schema(parameters=DEPLOYMENT_PARAMS),
    create=extend_schema(parameters=DEPLOYMENT_PARAMS, responses={201: s.ConnectorTokenCreatedSerializer}),
    revoke=extend_schema(parameters=DEPLOYMENT_PARAMS, request=None),
)
class ConnectorTokenViewSet(
    DeploymentChild, mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.CreateModelMixin, viewsets.GenericViewSet
):
    """Connector tokens of one deployment. The secret (and a ready connector command) is in the create
    response only; revoking disconnects connectors using it."""

    model = ConnectorToken
    serializer_class = s.ConnectorTokenSerializer

    def create(self, request: Request, *args, **kwargs) -> Response:
        deployment = self.deployment()
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        try:
            token, secret = create_connector_token(
                deployment=deployment,
                name=serializer.validated_data.get("name", ""),
                created_by=request.user,
                actor_label=actor_label(request),
            )
        except DjangoValidationError as exc:  # a served deployment has no tokens of its own
            _raise_validation(exc)
        token.secret = secret
        token.command = connector_command(server_url(request), secret)
        return Response(s.ConnectorTokenCreatedSerializer(token).data, status=201)

    @action(detail=True, methods=["post"])
    def revoke(self, request: Request, *args, **kwargs) -> Response:
        token = self.get_object()
        revoke_connector_token(token=token, actor=request.user, actor_label=actor_label(request))
        return Response(self.get_serializer(token).data)


@extend_schema_view(
    list=extend_schema(parameters=DEPLOYMENT_PARAMS),
    create=extend_schema(parameters=DEPLOYMENT_PARAMS),
    destroy=extend_schema(parameters=DEPLOYMENT_PARAMS),
)
class GrantViewSet(
    DeploymentChild, mixins.ListModelMixin, mixins.CreateModelMixin, mixins.DestroyModelMixin, viewsets.GenericViewSet
):
    """Other organisations allowed to call one of your deployments (`{"org": "<slug>"}`)."""

    model = ModelGrant
    serializer_class = s.GrantSerializer

    def get_queryset(self):
        return super().get_queryset().select_related("org")

    def create(self, request: Request, *args, **kwargs) -> Response:
        deployment = self.deployment()
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        try:
            grant = grant_model(
                deployment=deployment,
                org=serializer.validated_data["org"],
                actor=request.user,
                actor_label=actor_label(request),
            )
        except DjangoValidationError as exc:
            _raise_validation(exc)
        return Response(self.get_serializer(grant).data, status=201)

    def perform_destroy(self, grant: ModelGrant) -> None:
        revoke_grant(grant=grant, actor=self.request.user, actor_label=actor_label(self.request))


@extend_schema_view(
    list=extend_schema(parameters=[ORG_PARAM]),
    retrieve=extend_schema(parameters=[ORG_PARAM]),
    create=extend_schema(
        parameters=[ORG_PARAM], request=s.MemberAddSerializer, responses={201: s.InvitationCreatedSerializer}
    ),
    partial_update=extend_schema(parameters=[ORG_PARAM]),
    update=extend_schema(parameters=[ORG_PARAM]),
    destroy=extend_schema(parameters=[ORG_PARAM]),
)
class MemberViewSet(OrgScoped, viewsets.ModelViewSet):
    """Members and their roles. Adding a member always e-mails an invitation, which the person accepts
    (signing in, or creating their account); the answer is the same whether the address has an
    account or not. Only owners make, change or remove owners; the last owner stays."""

    serializer_class = s.MemberSerializer

    def get_queryset(self):
        return self.scoped(Membership).select_related("user").order_by("user__email")

    def create(self, request: Request, *args, **kwargs) -> Response:
        serializer = s.MemberAddSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        check_can_manage_member(self.membership, None, data["role"])
        try:
            invitation, link = invite_member_with_link(
                org=self.org,
                email=data["email"],
                role=data["role"],
                actor=request.user,
                actor_label=actor_label(request),
                accept_url=lambda secret: request.build_absolute_uri(
                    reverse("dashboard:accept_invitation", args=[secret])
                ),
            )
        except DjangoValidationError as exc:
            _raise_validation(exc)
        # The link once, like a new key's secret (s.InvitationCreatedSerializer): never cached.
        body = {**s.InvitationSerializer(invitation).data, "link": link}
        return Response(body, status=201, headers={"Cache-Control": "no-store, private"})

    def update(self, request: Request, *args, **kwargs) -> Response:
        membership = self.get_object()
        serializer = self.get_serializer(membership, data=request.data, partial=True)
        serializer.is_valid(raise_exception=True)
        role = serializer.validated_data.get("role", membership.role)
        check_can_manage_member(self.membership, membership, role)
        try:
            change_role(membership=membership, role=role, actor=request.user)
        except DjangoValidationError as exc:
            _raise_validation(exc)
        return Response(self.get_serializer(membership).data)

    def perform_destroy(self, membership: Membership) -> None:
        check_can_manage_member(self.membership, membership)
        try:
            remove_member(membership=membership, actor=self.request.user)
        except DjangoValidationError as exc:
            _raise_validation(exc)


@extend_schema_view(list=extend_schema(parameters=[ORG_PARAM]), destroy=extend_schema(parameters=[ORG_PARAM]))
class InvitationViewSet(OrgScoped, mixins.ListModelMixin, mixins.DestroyModelMixin, viewsets.GenericViewSet):
    """Pending invitations; deleting one revokes its link."""

    serializer_class = s.InvitationSerializer

    def get_queryset(self):
        return self.scoped(Invitation).pending()

    def perform_destroy(self, invitation: Invitation) -> None:
        if invitation.role == "owner":
            check_can_manage_member(self.membership, None, "owner")
        revoke_invitation(invitation=invitation, actor=self.request.user, actor_label=actor_label(self.request))


class UsageQuery(serializers.Serializer):
    start = serializers.DateField(required=False, help_text="First UTC day, inclusive (default: 30 days ago).")
    end = serializers.DateField(required=False, help_text="Last UTC day, inclusive (default: today).")
    key = serializers.IntegerField(required=False, help_text="An API key id of this org.")
    deployment = serializers.IntegerField(required=False, help_text="A deployment id the org may use.")
    period = serializers.ChoiceField(
        choices=["day", "hour"],
        required=False,
        help_text="Buckets (default day; hour for range=today). Hourly over more than 14 days is narrowed to "
        "the last 14 (`narrowed_from` says from when it was asked).",
    )
    range = serializers.ChoiceField(
        choices=Preset.choices, required=False, help_text="A preset range; overrides start and end."
    )


class UsageView(OrgScoped, APIView):
    """Usage per day or hour from the rollups, filtered like the dashboard's usage page. Members may read it."""

    manage = False

    @extend_schema(parameters=[ORG_PARAM, UsageQuery], responses=s.UsageSerializer)
    def get(self, request: Request, org: str) -> Response:
        form = UsageFilterForm(request.query_params, org=self.org, today=timezone.now().date())
        if not form.is_valid():
            raise ValidationError(form.errors.get_json_data())
        query = form.query()
        rows = usage_series(self.org, **query)
        body = {
            "start": form.cleaned_data["start"],
            "end": form.cleaned_data["end"],
            "narrowed_from": form.narrowed_from,
            "period": query["period"],
            "key": query["key"].id if query["key"] else None,
            "deployment": query["deployment"].id if query["deployment"] else None,
            "totals": {name: sum(row[name] for row in rows) for name in TOTALS},
            "buckets": rows,
        }
        return Response(s.UsageSerializer(body).data)


@extend_schema_view(
    list=extend_schema(parameters=[ORG_PARAM]),
    retrieve=extend_schema(
        parameters=[ORG_PARAM, OpenApiParameter("month", str, OpenApiParameter.PATH, description="YYYY-MM")]
    ),
)
class StatementViewSet(OrgScoped, mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Monthly statements with a line per deployment. Members may read them."""

    manage = False
    serializer_class = s.StatementSerializer
    lookup_field = "month"
    lookup_value_converter = "str"

    def get_queryset(self):
        return self.scoped(Statement).prefetch_related("lines")

    def get_object(self) -> Statement:
        try:
            first = date.fromisoformat(f"{self.kwargs['month']}-01")
        except ValueError:
            raise Http404("Months look like 2026-01.") from None
        return get_object_or_404(self.get_queryset(), month=first)
