"""What the management API does to keys beyond create, edit and revoke (api.views.ApiKeyViewSet):
list filters (`?status=`, `?q=`), each key's spend this month and budget share, rotate with a grace
period, pause and resume, the expiry, ending a rotation's grace early. Owners and admins only, like
every key endpoint; writes go through accounts.keys, audited."""

from __future__ import annotations

from datetime import timedelta

from django.core.exceptions import ValidationError as DjangoValidationError
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response

from accounts.keys import (
    MAX_ROTATION_GRACE,
    end_rotation_grace,
    pause_api_key,
    resume_api_key,
    rotate_api_key,
    set_api_key_expiry,
)
from accounts.models import ApiKey, PersonalAccessToken
from billing.key_usage import KeyFilter, find_keys, usage_by_key

from . import serializers as s

ORG_PARAM = OpenApiParameter("org", str, OpenApiParameter.PATH, description="The organisation's slug.")
MAX_GRACE_SECONDS = int(MAX_ROTATION_GRACE.total_seconds())


class KeyListQuery(serializers.Serializer):
    status = serializers.ChoiceField(
        choices=KeyFilter.choices,
        required=False,
        default=KeyFilter.ALL,
        help_text="Which keys: `all` (the default), `current` (active and paused), `active`, `paused`, "
        "`over_budget`, `rate_limited` (a 429 in the last hour), `expired`, `revoked`.",
    )
    q = serializers.CharField(
        required=False, allow_blank=True, max_length=100, help_text="Part of the name, or the start of a prefix."
    )


class RotateRequest(serializers.Serializer):
    grace_seconds = serializers.IntegerField(
        min_value=0,
        max_value=MAX_GRACE_SECONDS,
        help_text=f"How long the current secret keeps working (0 to {MAX_GRACE_SECONDS}: 30 days); then 401.",
    )


class ExpiryRequest(serializers.Serializer):
    expires_at = serializers.DateTimeField(allow_null=True, help_text="In the future; null: never.")


def _actor_label(request: Request) -> str:
    return request.auth.actor_label if isinstance(request.auth, PersonalAccessToken) else ""


def _refused(exc: DjangoValidationError):
    raise ValidationError({"detail": exc.messages}) from None


class KeyManagement:
    """Mixed into ApiKeyViewSet (an OrgScoped viewset: `self.org`, `get_object`, pages)."""

    def filtered_keys(self, request: Request):
        query = KeyListQuery(data=request.query_params)
        query.is_valid(raise_exception=True)
        data = query.validated_data
        return find_keys(self.org, status=data["status"], query=(data.get("q") or "").replace("\x00", ""))

    def get_serializer_context(self):
        context = super().get_serializer_context()
        context.setdefault("key_usage", None)
        return context

    def list(self, request: Request, *args, **kwargs) -> Response:
        keys = self.paginate_queryset(self.filtered_keys(request).prefetch_related("allowed_deployments"))
        context = {**self.get_serializer_context(), "key_usage": usage_by_key(self.org, keys)}
        return self.get_paginated_response(s.ApiKeySerializer(keys, many=True, context=context).data)

    def _answer(self, key: ApiKey, status: int = 200) -> Response:
        key.refresh_from_db()
        return Response(self.get_serializer(key).data, status=status)

    @extend_schema(parameters=[ORG_PARAM], request=RotateRequest, responses=s.ApiKeyCreatedSerializer)
    @action(detail=True, methods=["post"])
    def rotate(self, request: Request, *args, **kwargs) -> Response:
        """A new secret (in this answer only); the current one keeps working for `grace_seconds`, then
        is refused. A secret still in the grace of an earlier rotation is refused at once."""
        body = RotateRequest(data=request.data)
        body.is_valid(raise_exception=True)
        grace = timedelta(seconds=body.validated_data["grace_seconds"])
        try:
            key, secret = rotate_api_key(
                key=self.get_object(), grace=grace, actor=request.user, actor_label=_actor_label(request)
            )
        except DjangoValidationError as exc:
            _refused(exc)
        key.secret = secret
        return Response(s.ApiKeyCreatedSerializer(key, context=self.get_serializer_context()).data)

    @extend_schema(parameters=[ORG_PARAM], request=None)
    @action(detail=True, methods=["post"], url_path="end-grace")
    def end_grace(self, request: Request, *args, **kwargs) -> Response:
        """Refuse the secret the last rotation replaced now, rather than at the end of its grace."""
        key = self.get_object()
        if key.is_revoked:
            raise ValidationError({"detail": ["A revoked key cannot be changed."]})
        return self._answer(end_rotation_grace(key=key, actor=request.user, actor_label=_actor_label(request)))

    @extend_schema(parameters=[ORG_PARAM], request=None)
    @action(detail=True, methods=["post"])
    def pause(self, request: Request, *args, **kwargs) -> Response:
        """Refuse every request with the key (401 `key_paused`) until it is resumed."""
        try:
            key = pause_api_key(key=self.get_object(), actor=request.user, actor_label=_actor_label(request))
        except DjangoValidationError as exc:
            _refused(exc)
        return self._answer(key)

    @extend_schema(parameters=[ORG_PARAM], request=None)
    @action(detail=True, methods=["post"])
    def resume(self, request: Request, *args, **kwargs) -> Response:
        try:
            key = resume_api_key(key=self.get_object(), actor=request.user, actor_label=_actor_label(request))
        except DjangoValidationError as exc:
            _refused(exc)
        return self._answer(key)

    @extend_schema(parameters=[ORG_PARAM], request=ExpiryRequest)
    @action(detail=True, methods=["post"])
    def expiry(self, request: Request, *args, **kwargs) -> Response:
        """Set when the key stops working (null: never); a later expiry brings an expired key back.
        Audited as `key.expiry_changed` with the old and new values."""
        body = ExpiryRequest(data=request.data)
        body.is_valid(raise_exception=True)
        try:
            key = set_api_key_expiry(
                key=self.get_object(),
                expires_at=body.validated_data["expires_at"],
                actor=request.user,
                actor_label=_actor_label(request),
            )
        except DjangoValidationError as exc:
            _refused(exc)
        return self._answer(key)
