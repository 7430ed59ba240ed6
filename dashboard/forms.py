from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal, InvalidOperation

from django import forms
from django.conf import settings
from django.contrib.auth import authenticate, password_validation
from django.contrib.auth import forms as auth_forms
from django.contrib.auth.forms import PasswordChangeForm
from django.core.exceptions import ValidationError
from django.http import HttpRequest

from accounts.models import (
    GRANTEE_MISS,
    MAX_BUDGET_MICROS,
    MAX_RATE_LIMIT,
    ApiKey,
    AuditAction,
    Membership,
    Organization,
    Role,
    User,
    lower_role,
)
from billing.forms import DayField
from deployments.models import MAX_PRICE_MICROS, Deployment, SurfaceMode
from lib.money import micros_to_usd, usd_to_micros

MAX_PRICE_USD = micros_to_usd(MAX_PRICE_MICROS)
MAX_BUDGET_USD = micros_to_usd(MAX_BUDGET_MICROS)


class UsdField(forms.DecimalField):
    """A USD amount typed as a decimal ("0.15"), cleaned to integer micro-USD."""

    def __init__(self, **kwargs):
        kwargs.setdefault("min_value", Decimal("0"))
        kwargs.setdefault("max_digits", 18)
        kwargs.setdefault("decimal_places", 6)
        super().__init__(**kwargs)
        self.widget.attrs.setdefault("step", "0.000001")
        self.widget.attrs.setdefault("inputmode", "decimal")

    def clean(self, value):
        amount = super().clean(value)
        if amount is None:
            return None
        try:
            return usd_to_micros(amount)
        except (ValueError, InvalidOperation) as exc:
            raise ValidationError(str(exc)) from None

    def prepare_value(self, value):
        if isinstance(value, int):
            return micros_to_usd(value).normalize()
        return value


def _end_of_day(day: date) -> datetime:
    return datetime.combine(day, time.max, tzinfo=UTC)


def servers_for(org: Organization, deployment: Deployment | None = None):
    """The org's deployments that may serve others (not served themselves), for a `served_by` choice.
    The model layer (Deployment.clean_served_by) has the final word."""
    servers = Deployment.objects.for_org(org).filter(served_by__isnull=True)
    return servers.exclude(pk=deployment.pk) if deployment is not None else servers


SERVED_BY_HELP = (
    "Another deployment whose connectors also serve this model (one connector in front of Ollama or a "
    "llama.cpp router with several models). Requests name the upstream model below."
)


class DeploymentForm(forms.Form):
    name = forms.CharField(
        max_length=64,
        help_text="What API clients send as `model`, e.g. gemma-tunnel. Lower-case; unique on this server.",
    )
    upstream_model = forms.CharField(
        max_length=200, required=False, help_text="Rewrite `model` to this name upstream. Leave empty to keep it."
    )
    served_by = forms.ModelChoiceField(
        queryset=Deployment.objects.none(),
        required=False,
        label="Served by",
        empty_label="Its own connectors",
        help_text=SERVED_BY_HELP,
    )
    surface_mode = forms.ChoiceField(
        choices=SurfaceMode.choices, initial=SurfaceMode.AUTO, required=False, label="Surfaces"
    )
    price_input_micros = UsdField(label="Input price (USD per million tokens)", initial=0, max_value=MAX_PRICE_USD)
    price_output_micros = UsdField(label="Output price (USD per million tokens)", initial=0, max_value=MAX_PRICE_USD)

    def __init__(self, *args, org: Organization, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["served_by"].queryset = servers_for(org)

    def clean_surface_mode(self) -> str:
        return self.cleaned_data["surface_mode"] or SurfaceMode.AUTO


class PricesForm(forms.Form):
    upstream_model = forms.CharField(max_length=200, required=False, label="Upstream model")
    price_input_micros = UsdField(label="Input price (USD per million tokens)", max_value=MAX_PRICE_USD)
    price_output_micros = UsdField(label="Output price (USD per million tokens)", max_value=MAX_PRICE_USD)


class ConnectorTokenForm(forms.Form):
    name = forms.CharField(max_length=100, required=False, help_text="Where it runs, e.g. “gpu-box-1”.")


class GrantForm(forms.Form):
    """Shares a deployment with another organisation: any one by the share ID it gave you, or one
    you belong to by its slug. Every other value, whether an organisation has it or not, gets the
    same answer (GRANTEE_MISS), so the form tells no one which organisations exist."""

    org = forms.CharField(
        label="Share ID",
        max_length=50,
        help_text="The share ID the other organisation gave you (org_…, on its Members page), "
        "or the slug of another organisation you belong to.",
    )

    def __init__(self, *args, user: User, **kwargs):
        super().__init__(*args, **kwargs)
        self.user = user

    def clean_org(self) -> Organization:
        org = Organization.objects.grantee(self.cleaned_data["org"], yours=Organization.objects.for_user(self.user))
        if org is None:
            raise ValidationError(GRANTEE_MISS)
        return org


class ApiKeyForm(forms.Form):
    name = forms.CharField(max_length=100)
    deployments = forms.ModelMultipleChoiceField(
        queryset=Deployment.objects.none(),
        required=False,
        widget=forms.CheckboxSelectMultiple,
        label="Model access",
        help_text="Tick none for every model the organisation may use.",
    )
    rpm_limit = forms.IntegerField(min_value=1, max_value=MAX_RATE_LIMIT, required=False, label="Requests per minute")
    tpm_limit = forms.IntegerField(min_value=1, max_value=MAX_RATE_LIMIT, required=False, label="Tokens per minute")
    monthly_budget_micros = UsdField(required=False, max_value=MAX_BUDGET_USD, label="Monthly budget (USD)")
    expires_on = DayField(required=False, label="Expires on", help_text="Optional; UTC.")
    use_fallbacks = forms.BooleanField(
        required=False,
        label="Use fallbacks",
        help_text="When a model is offline or busy, send the request to its fallbacks (set on each deployment).",
    )

    def __init__(self, *args, org: Organization, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["deployments"].queryset = Deployment.objects.usable_by(org).order_by("name")

    @classmethod
    def for_key(cls, key: ApiKey, data=None) -> ApiKeyForm:
        initial = {
            "name": key.name,
            "deployments": [] if key.all_models else list(key.allowed_deployments.all()),
            "rpm_limit": key.rpm_limit,
            "tpm_limit": key.tpm_limit,
            "monthly_budget_micros": key.monthly_budget_micros,
            "expires_on": key.expires_at.date() if key.expires_at else None,
            "use_fallbacks": key.use_fallbacks,
        }
        return cls(data, org=key.org, initial=initial)

    def clean_expires_on(self):
        day = self.cleaned_data["expires_on"]
        if day is not None and _end_of_day(day) <= datetime.now(UTC):
            raise ValidationError("The expiry must be in the future.")
        return day

    def key_fields(self) -> dict:
        data = self.cleaned_data
        return {
            "name": data["name"],
            "deployments": list(data["deployments"]),
            "rpm_limit": data["rpm_limit"],
            "tpm_limit": data["tpm_limit"],
            "monthly_budget_micros": data["monthly_budget_micros"],
            "expires_at": _end_of_day(data["expires_on"]) if data["expires_on"] else None,
            "use_fallbacks": data["use_fallbacks"],
        }


class MemberAddForm(forms.Form):
    email = forms.EmailField(max_length=254)  # Invitation.email's column
    role = forms.ChoiceField(choices=Role.choices, initial=Role.MEMBER)

    def __init__(self, *args, roles: list[str], **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["role"].choices = [(value, label) for value, label in Role.choices if value in roles]


class RoleForm(forms.Form):
    role = forms.ChoiceField(choices=Role.choices)


def is_own_password(request: HttpRequest, password: str) -> bool:
    """Whether `password` is the signed-in user's, checked through authenticate() so that a wrong one
    counts as a failed sign-in (django-axes): a stolen session cannot guess at it freely."""
    user = authenticate(request, username=request.user.email, password=password)
    return user is not None and user.pk == request.user.pk


PAT_EXPIRY_DAYS = (7, 30, 90, 180, 365)


def pat_expiry_choices() -> list[tuple[int, str]]:
    days = {d for d in PAT_EXPIRY_DAYS if d <= settings.PAT_MAX_DAYS} | {
        settings.PAT_DEFAULT_DAYS,
        settings.PAT_MAX_DAYS,
    }
    return [(d, "in a year" if d == 365 else f"in {d} days") for d in sorted(days)]


class PersonalAccessTokenForm(forms.Form):
    name = forms.CharField(max_length=100, help_text="What uses it, e.g. “terraform” or “billing export”.")
    org = forms.ModelChoiceField(queryset=Organization.objects.none(), label="Organisation", empty_label=None)
    role = forms.ChoiceField(
        choices=Role.choices,
        initial=Role.MEMBER,
        help_text="At most your own role there. If yours is lowered, the token's follows.",
    )
    expires_in_days = forms.TypedChoiceField(label="Expires", coerce=int)
    password = forms.CharField(
        label="Your password",
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "current-password"}),
        help_text="To confirm it is you.",
    )

    def __init__(self, *args, request: HttpRequest, **kwargs):
        super().__init__(*args, **kwargs)
        self.request = request
        self.fields["org"].queryset = Organization.objects.for_user(request.user).order_by("name", "slug")
        self.fields["expires_in_days"].choices = pat_expiry_choices()
        self.fields["expires_in_days"].initial = settings.PAT_DEFAULT_DAYS

    def clean_password(self) -> str:
        if not is_own_password(self.request, self.cleaned_data["password"]):
            raise ValidationError("That is not your password.")
        return ""  # checked; not kept

    def clean(self):
        data = super().clean()
        org, role = data.get("org"), data.get("role")
        if org is not None and role:
            membership = Membership.objects.filter(org=org, user=self.request.user).first()
            if membership is None or lower_role(role, membership.role) != role:
                self.add_error("role", "A token's role cannot be above your own in that organisation.")
        return data

    def expires_at(self, now: datetime) -> datetime:
        return now + timedelta(days=self.cleaned_data["expires_in_days"])


class ConfirmedPasswordChangeForm(PasswordChangeForm):
    """Django's form, with the old password checked as a sign-in (throttled)."""

    def __init__(self, user, *args, request: HttpRequest, **kwargs):
        super().__init__(user, *args, **kwargs)
        self.request = request

    def clean_old_password(self) -> str:
        old_password = self.cleaned_data["old_password"]
        if not is_own_password(self.request, old_password):
            raise ValidationError(self.error_messages["password_incorrect"], code="password_incorrect")
        return old_password


class PasswordResetForm(auth_forms.PasswordResetForm):
    """Django's form, which also writes to an account that has no password yet: an owner made on the
    command line (`create_org --owner`) whose one-time link has expired. Django leaves such accounts
    out for sites where they sign in elsewhere (LDAP, SSO); Tokios has no such way in."""

    def get_users(self, email: str):
        wanted = email.casefold()
        users = User.objects.filter(email__iexact=email, is_active=True)
        return (user for user in users if user.email.casefold() == wanted)


class AcceptInvitationForm(forms.Form):
    name = forms.CharField(max_length=150, required=False, label="Your name")
    password1 = forms.CharField(label="Password", widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}))
    password2 = forms.CharField(
        label="Password again", widget=forms.PasswordInput(attrs={"autocomplete": "new-password"})
    )

    def __init__(self, *args, email: str, **kwargs):
        super().__init__(*args, **kwargs)
        self.email = email

    def clean(self):
        data = super().clean()
        if data.get("password1") and data.get("password1") != data.get("password2"):
            self.add_error("password2", "The two passwords differ.")
        elif data.get("password1"):
            try:
                password_validation.validate_password(
                    data["password1"], User(email=self.email, name=data.get("name", ""))
                )
            except ValidationError as exc:
                self.add_error("password1", exc)
        return data


AUDIT_ACTION_CHOICES = [("", "Any action"), *AuditAction.choices]


class AuditFilterForm(forms.Form):
    action = forms.ChoiceField(choices=AUDIT_ACTION_CHOICES, required=False)
    actor = forms.CharField(
        required=False, label="Actor", widget=forms.TextInput(attrs={"placeholder": "email or label"})
    )
    target = forms.CharField(
        required=False,
        max_length=200,
        label="Search",
        help_text="A key's or token's name or prefix, an e-mail, a model: in the target or the details.",
        widget=forms.TextInput(attrs={"placeholder": "name, prefix, email, model…"}),
    )
    start = DayField(required=False, label="From")
    end = DayField(required=False, label="To")
