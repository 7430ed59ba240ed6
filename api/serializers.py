from __future__ import annotations

import re
from datetime import UTC, datetime

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from accounts.models import (
    GRANTEE_MISS,
    ApiKey,
    Invitation,
    KeyStatus,
    Membership,
    Organization,
    PersonalAccessToken,
    Role,
)
from accounts.tenancy import can_manage
from alerts.connector_history import token_labels
from billing.key_usage import NO_USAGE, KeyUsage, usage_by_key
from billing.models import Statement, StatementLine, StatementStatus
from deployments.models import DEPLOYMENT_NAME_RE, MAX_FALLBACKS, ConnectorToken, Deployment, ModelGrant
from proxy.tunnel import presence


class NameRelatedField(serializers.SlugRelatedField):
    """A related object by its name or slug. A string no object can have (`pattern`) does not
    exist without a query: PostgreSQL refuses a NUL in a text parameter."""

    def __init__(self, *, pattern: re.Pattern[str], **kwargs):
        self.pattern = pattern
        super().__init__(**kwargs)

    def to_internal_value(self, data):
        if isinstance(data, str) and not self.pattern.fullmatch(data):
            self.fail("does_not_exist", slug_name=self.slug_field, value=data)
        return super().to_internal_value(data)


class OrgSerializer(serializers.Serializer):
    slug = serializers.CharField(source="org.slug")
    name = serializers.CharField(source="org.name")
    role = serializers.ChoiceField(choices=Role.choices)
    monthly_budget_micros = serializers.IntegerField(source="org.monthly_budget_micros", allow_null=True)
    share_id = serializers.SerializerMethodField(
        help_text="Give this to a model owner who wants to share a model with you (owners and admins; "
        "null for members). It identifies the organisation; it grants nothing."
    )

    @extend_schema_field(serializers.CharField(allow_null=True))
    def get_share_id(self, membership: Membership) -> str | None:
        return membership.org.share_id if can_manage(membership) else None


class ApiKeySerializer(serializers.ModelSerializer):
    models = NameRelatedField(
        source="allowed_deployments",
        slug_field="name",
        pattern=DEPLOYMENT_NAME_RE,
        many=True,
        required=False,
        queryset=Deployment.objects.none(),
        help_text="Model names this key may call; empty for every model the org may use.",
    )
    status = serializers.CharField(
        read_only=True,
        help_text=f"One of {', '.join(KeyStatus.values)}: what the gateway does with it (only active keys are answered).",
    )
    # This month's usage (UTC, to the last request: billing.key_usage), beside the status.
    spent_this_month_micros = serializers.SerializerMethodField(help_text="Spend this month (UTC), micro-USD.")
    budget_used_percent = serializers.SerializerMethodField(
        help_text="Whole percent of monthly_budget_micros spent (may pass 100); null without a budget."
    )
    over_budget = serializers.SerializerMethodField(help_text="Spend reached the key's monthly budget (429s).")
    rate_limited_recently = serializers.SerializerMethodField(help_text="A request was answered 429 in the last hour.")

    class Meta:
        model = ApiKey
        fields = [
            "id",
            "name",
            "prefix",
            "status",
            "all_models",
            "models",
            "rpm_limit",
            "tpm_limit",
            "monthly_budget_micros",
            "expires_at",
            "use_fallbacks",
            "created_at",
            "last_used_at",
            "revoked_at",
            "paused_at",
            "rotated_at",
            "previous_prefix",
            "previous_valid_until",
            "spent_this_month_micros",
            "budget_used_percent",
            "over_budget",
            "rate_limited_recently",
        ]
        read_only_fields = [
            "id",
            "prefix",
            "status",
            "all_models",
            "created_at",
            "last_used_at",
            "revoked_at",
            "paused_at",
            "rotated_at",
            "previous_prefix",
            "previous_valid_until",
        ]
        extra_kwargs = {
            "use_fallbacks": {
                "help_text": "Requests for an offline or full model go to its fallbacks (the deployment's `fallbacks`)."
            },
            "previous_prefix": {"help_text": "The secret the last rotation replaced ('' if never rotated)."},
            "previous_valid_until": {"help_text": "When that secret stops (or stopped) working."},
        }

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        org = self.context.get("org")
        if org is not None:
            self.fields["models"].child_relation.queryset = Deployment.objects.usable_by(org)

    def _usage(self, key: ApiKey) -> KeyUsage:
        """From the list's one batch (context "key_usage"), else read for this key alone."""
        batch = self.context.get("key_usage")
        if batch is None:
            batch = self.context["key_usage"] = {}
        if key.pk not in batch:
            batch.update(usage_by_key(self.context.get("org") or key.org, [key]))
        return batch.get(key.pk, NO_USAGE)

    def get_spent_this_month_micros(self, key: ApiKey) -> int:
        return self._usage(key).spent_micros

    @extend_schema_field(serializers.IntegerField(allow_null=True))
    def get_budget_used_percent(self, key: ApiKey) -> int | None:
        return self._usage(key).budget_percent(key)

    def get_over_budget(self, key: ApiKey) -> bool:
        return self._usage(key).over_budget(key)

    def get_rate_limited_recently(self, key: ApiKey) -> bool:
        return self._usage(key).rate_limited


class ApiKeyCreatedSerializer(ApiKeySerializer):
    secret = serializers.CharField(read_only=True, help_text="Shown once; Tokios keeps only its hash.")

    class Meta(ApiKeySerializer.Meta):
        fields = [*ApiKeySerializer.Meta.fields, "secret"]


class UnixTimeField(serializers.DateTimeField):
    """A time presence keeps as unix seconds, shown like every other time of the API."""

    def to_representation(self, value: float) -> str:
        return super().to_representation(datetime.fromtimestamp(value, UTC))


class ConnectorSerializer(serializers.Serializer):
    """A live connector, as presence (proxy.tunnel.presence.ConnectorInfo) has it."""

    connector_id = serializers.CharField()
    version = serializers.CharField()
    remote = serializers.CharField()
    connected_since = UnixTimeField()
    last_heartbeat = UnixTimeField()
    inflight = serializers.IntegerField()
    max_concurrency = serializers.IntegerField()
    draining = serializers.BooleanField()
    token_id = serializers.IntegerField(help_text="The connector token it presented.")
    token_label = serializers.SerializerMethodField(help_text="That token's name (else its prefix).")

    def get_token_label(self, info) -> str:
        return self.context.get("token_labels", {}).get(info.token_id, "")


@extend_schema_field(serializers.ListField(child=serializers.CharField()))
class FallbackNamesField(serializers.ListField):
    """A deployment's fallbacks as their names, in the order they are tried. On input, each name must
    be a deployment the org may use (its own or one granted to it); the model layer checks the rest
    (Deployment.clean_fallbacks)."""

    child = serializers.CharField(max_length=64)
    default_error_messages = {"unknown": "No deployment your organisation may use is named {name!r}."}

    def __init__(self, **kwargs):
        kwargs.setdefault("max_length", MAX_FALLBACKS)
        kwargs.setdefault("help_text", f"Names of the deployments tried, in this order (at most {MAX_FALLBACKS}).")
        super().__init__(**kwargs)

    def get_attribute(self, instance: Deployment) -> list[str]:
        return [link.fallback.name for link in instance.fallback_links.select_related("fallback")]

    def to_representation(self, data: list[str]) -> list[str]:
        return list(data)

    def to_internal_value(self, data) -> list[Deployment]:
        if isinstance(data, list) and len(data) > MAX_FALLBACKS:  # before any name is looked at
            self.fail("max_length", max_length=MAX_FALLBACKS)
        names = super().to_internal_value(data)
        org = self.context.get("org")
        wanted = [name for name in names if DEPLOYMENT_NAME_RE.fullmatch(name)]
        found = {d.name: d for d in Deployment.objects.usable_by(org).filter(name__in=wanted)} if org else {}
        for name in names:
            if name not in found:
                self.fail("unknown", name=name)
        return [found[name] for name in names]


class DeploymentSerializer(serializers.ModelSerializer):
    served_by = NameRelatedField(
        slug_field="name",
        pattern=DEPLOYMENT_NAME_RE,
        queryset=Deployment.objects.none(),
        allow_null=True,
        required=False,
        help_text="The name of another deployment of the org whose connectors also serve this one (null: its "
        "own connectors). Requests then ask that model server for `upstream_model`.",
    )
    fallbacks = FallbackNamesField(required=False)
    online = serializers.SerializerMethodField()
    connectors = serializers.SerializerMethodField()
    connector_models = serializers.SerializerMethodField(
        help_text="The upstream model names its live connectors (a served deployment: its server's) announce."
    )

    class Meta:
        model = Deployment
        fields = [
            "id",
            "name",
            "upstream_model",
            "price_input_micros",
            "price_output_micros",
            "surface_mode",
            "served_by",
            "fallbacks",
            "created_at",
            "disabled_at",
            "online",
            "connectors",
            "connector_models",
        ]
        read_only_fields = ["id", "created_at", "disabled_at"]
        extra_kwargs = {
            "price_input_micros": {"help_text": "Micro-USD per million input tokens."},
            "price_output_micros": {"help_text": "Micro-USD per million output tokens."},
            # Uniqueness (global) is the action's rule; it answers with a clear message.
            "name": {"validators": []},
        }

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        org = self.context.get("org")
        if org is not None and "served_by" in self.fields:
            self.fields["served_by"].queryset = Deployment.objects.for_org(org)

    def _connectors(self, deployment: Deployment) -> list:
        """Its live connectors: a served deployment's are its server's (Deployment.pool_id)."""
        cache = self.context.setdefault("_connectors", {})
        if deployment.pool_id not in cache:
            cache[deployment.pool_id] = presence.live_connectors_sync(deployment.pool_id)
        return cache[deployment.pool_id]

    def get_online(self, deployment: Deployment) -> bool:
        return bool(self._connectors(deployment))

    @extend_schema_field(ConnectorSerializer(many=True))
    def get_connectors(self, deployment: Deployment) -> list:
        connectors = self._connectors(deployment)
        labels = token_labels(deployment.pool_id, (info.token_id for info in connectors))
        return ConnectorSerializer(connectors, many=True, context={"token_labels": labels}).data

    @extend_schema_field(serializers.ListField(child=serializers.CharField()))
    def get_connector_models(self, deployment: Deployment) -> list[str]:
        return list(dict.fromkeys(name for info in self._connectors(deployment) for name in info.models or ()))


class DeploymentUpdateSerializer(DeploymentSerializer):
    class Meta(DeploymentSerializer.Meta):
        fields = [
            "upstream_model",
            "price_input_micros",
            "price_output_micros",
            "surface_mode",
            "served_by",
            "fallbacks",
        ]


class ConnectorTokenSerializer(serializers.ModelSerializer):
    status = serializers.SerializerMethodField()

    class Meta:
        model = ConnectorToken
        fields = ["id", "name", "prefix", "status", "created_at", "last_seen_at", "revoked_at"]
        read_only_fields = ["id", "prefix", "status", "created_at", "last_seen_at", "revoked_at"]

    def get_status(self, token: ConnectorToken) -> str:
        return "revoked" if token.revoked_at else "active"


class ConnectorTokenCreatedSerializer(ConnectorTokenSerializer):
    secret = serializers.CharField(read_only=True, help_text="Shown once; Tokios keeps only its hash.")
    command = serializers.CharField(read_only=True, help_text="The connector command line with this token.")

    class Meta(ConnectorTokenSerializer.Meta):
        fields = [*ConnectorTokenSerializer.Meta.fields, "secret", "command"]


@extend_schema_field(
    serializers.CharField(
        help_text="On create: the share ID the other organisation gave you (org_…), or the slug of one of "
        "yours (a personal access token: its own). In answers: the organisation's slug."
    )
)
class GrantTargetField(serializers.SlugRelatedField):
    """The org a grant lets in: any org by its share ID, or by slug one of those the request may see
    (the user's orgs; a personal access token: its one org). Every other string, whether an org has
    it or not, gets the same answer, so the endpoint tells no one which organisations exist."""

    default_error_messages = {"does_not_exist": GRANTEE_MISS}

    def __init__(self, **kwargs):
        super().__init__(slug_field="slug", queryset=Organization.objects.all(), **kwargs)

    def yours(self):
        request = self.context.get("request")
        if request is None:
            return Organization.objects.none()
        orgs = Organization.objects.for_user(request.user)
        if isinstance(request.auth, PersonalAccessToken):
            orgs = orgs.filter(pk=request.auth.org_id)
        return orgs

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid")
        org = Organization.objects.grantee(data, yours=self.yours())
        if org is None:
            self.fail("does_not_exist")
        return org


class GrantSerializer(serializers.ModelSerializer):
    org = GrantTargetField()
    org_name = serializers.CharField(source="org.name", read_only=True)

    class Meta:
        model = ModelGrant
        fields = ["id", "org", "org_name", "created_at"]
        read_only_fields = ["id", "created_at"]
        # The pair's uniqueness is grant_model's rule, with its own message.
        validators: list = []


class MemberSerializer(serializers.ModelSerializer):
    email = serializers.EmailField(source="user.email", read_only=True)
    name = serializers.CharField(source="user.name", read_only=True)

    class Meta:
        model = Membership
        fields = ["id", "email", "name", "role", "created_at"]
        read_only_fields = ["id", "email", "name", "created_at"]


class MemberAddSerializer(serializers.Serializer):
    email = serializers.EmailField(max_length=254)  # Invitation.email's column
    role = serializers.ChoiceField(choices=Role.choices, default=Role.MEMBER)


class InvitationSerializer(serializers.ModelSerializer):
    status = serializers.CharField(read_only=True)

    class Meta:
        model = Invitation
        fields = ["id", "email", "role", "status", "created_at", "expires_at"]
        read_only_fields = fields


class InvitationCreatedSerializer(InvitationSerializer):
    link = serializers.CharField(
        read_only=True,
        help_text="The link that was e-mailed, to send another way. Only in this answer: Tokios keeps a hash.",
    )

    class Meta(InvitationSerializer.Meta):
        fields = [*InvitationSerializer.Meta.fields, "link"]
        read_only_fields = fields


class UsageBucketSerializer(serializers.Serializer):
    bucket_start = serializers.DateTimeField()
    requests = serializers.IntegerField()
    errors = serializers.IntegerField()
    input_tokens = serializers.IntegerField()
    output_tokens = serializers.IntegerField()
    cost_micros = serializers.IntegerField()


class UsageTotalsSerializer(serializers.Serializer):
    requests = serializers.IntegerField()
    errors = serializers.IntegerField()
    input_tokens = serializers.IntegerField()
    output_tokens = serializers.IntegerField()
    cost_micros = serializers.IntegerField()


class UsageSerializer(serializers.Serializer):
    start = serializers.DateField()
    end = serializers.DateField()
    narrowed_from = serializers.DateField(
        allow_null=True, help_text="The start asked for, when hourly buckets narrowed the range; else null."
    )
    period = serializers.ChoiceField(choices=["day", "hour"])
    key = serializers.IntegerField(allow_null=True)
    deployment = serializers.IntegerField(allow_null=True)
    totals = UsageTotalsSerializer()
    buckets = UsageBucketSerializer(many=True)


class StatementLineSerializer(serializers.ModelSerializer):
    deployment = serializers.CharField(source="deployment_name")

    class Meta:
        model = StatementLine
        fields = ["deployment", "requests", "errors", "input_tokens", "output_tokens", "cost_micros"]


class StatementSerializer(serializers.ModelSerializer):
    month = serializers.SerializerMethodField()
    status = serializers.ChoiceField(
        choices=StatementStatus.choices,
        read_only=True,
        help_text="running: the month is not over (rebuilt hourly); closing: over, last built before its end; "
        "issued: built after it ended.",
    )
    errors = serializers.IntegerField(read_only=True, help_text="Requests answered with an error, over the lines.")
    lines = StatementLineSerializer(many=True, read_only=True)

    class Meta:
        model = Statement
        fields = [
            "month",
            "status",
            "requests",
            "errors",
            "input_tokens",
            "output_tokens",
            "total_micros",
            "updated_at",
            "lines",
        ]

    def get_month(self, statement: Statement) -> str:
        return f"{statement.month:%Y-%m}"
