"""Sign in and out, password reset, invitations, the org switcher and the profile (with tokens)."""

from __future__ import annotations

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse, reverse_lazy
from django.utils import timezone
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_POST

from accounts.actions import create_personal_access_token, revoke_personal_access_token
from accounts.invitations import accept_invitation, find_invitation
from accounts.models import PersonalAccessToken, User
from accounts.tenancy import memberships_for, org_for_request, select_org
from accounts.throttle import allow_password_reset, client_ip

from ..forms import AcceptInvitationForm, ConfirmedPasswordChangeForm, PasswordResetForm, PersonalAccessTokenForm
from .common import secret_page


class LoginView(auth_views.LoginView):
    template_name = "registration/login.html"
    redirect_authenticated_user = True


class LogoutView(auth_views.LogoutView):
    pass


def signin_locked_out(request: HttpRequest, original_response=None, credentials=None) -> HttpResponse:
    """django-axes' lockout answer (settings.AXES_LOCKOUT_CALLABLE), for the sign-in page, the admin's
    and a password re-entry alike. It says why and for how long, not whether the account exists:
    unknown addresses are counted and locked the same way. (Axes passes its arguments in a different
    order on its async path; none is needed here.)"""
    context = {"minutes": settings.SIGNIN_LOCKOUT_MINUTES}
    return render(request, "registration/locked_out.html", context, status=429)


class PasswordResetView(auth_views.PasswordResetView):
    """Beyond settings.PASSWORD_RESET_PER_EMAIL requests an hour for one address, or
    PASSWORD_RESET_PER_IP from one client address, the same "check your email" page and no e-mail."""

    form_class = PasswordResetForm
    email_template_name = "registration/password_reset_email.txt"
    subject_template_name = "registration/password_reset_subject.txt"
    success_url = reverse_lazy("dashboard:password_reset_done")

    def form_valid(self, form):
        if not allow_password_reset(email=form.cleaned_data["email"], ip=client_ip(self.request)):
            return HttpResponseRedirect(self.get_success_url())
        return super().form_valid(form)


class PasswordResetConfirmView(auth_views.PasswordResetConfirmView):
    success_url = reverse_lazy("dashboard:password_reset_complete")


class PasswordChangeView(auth_views.PasswordChangeView):
    form_class = ConfirmedPasswordChangeForm
    success_url = reverse_lazy("dashboard:password_change_done")

    def get_form_kwargs(self):
        return {**super().get_form_kwargs(), "request": self.request}


def accept_invitation_view(request: HttpRequest, secret: str) -> HttpResponse:
    invitation = find_invitation(secret)
    if invitation is None:
        raise Http404("No such invitation.")
    context = {"invitation": invitation}
    if not invitation.is_pending:
        return render(request, "registration/invitation.html", context, status=410)
    signed_in = request.user.is_authenticated
    if signed_in and request.user.email.lower() != invitation.email.lower():
        context["wrong_user"] = True
        return render(request, "registration/invitation.html", context, status=403)
    existing = not signed_in and User.objects.filter(email__iexact=invitation.email).exists()
    if existing:
        context["needs_login"] = f"{reverse('dashboard:login')}?next={request.path}"
        return render(request, "registration/invitation.html", context)

    form = None if signed_in else AcceptInvitationForm(request.POST or None, email=invitation.email)
    if request.method == "POST" and (form is None or form.is_valid()):
        try:
            if signed_in:
                membership = accept_invitation(invitation=invitation, user=request.user)
            else:
                membership = accept_invitation(
                    invitation=invitation, name=form.cleaned_data["name"], password=form.cleaned_data["password1"]
                )
                login(request, membership.user, backend="django.contrib.auth.backends.ModelBackend")
        except ValidationError as exc:
            messages.error(request, " ".join(exc.messages))
            return redirect(request.path)
        select_org(request, membership.org)
        messages.success(request, f"Welcome to {membership.org.name}.")
        return redirect("dashboard:overview")
    context["form"] = form
    return render(request, "registration/invitation.html", context)


@login_required
@require_POST
def switch_org(request: HttpRequest) -> HttpResponse:
    membership = get_object_or_404(memberships_for(request.user), org_id=request.POST.get("org") or 0)
    select_org(request, membership.org)
    target = request.POST.get("next") or ""
    if not url_has_allowed_host_and_scheme(
        target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        target = reverse("dashboard:overview")
    return redirect(target)


def _tokens(request: HttpRequest):
    return PersonalAccessToken.objects.for_user(request.user).select_related("org")


@login_required
def profile(request: HttpRequest) -> HttpResponse:
    """The profile, and personal access tokens: made here only, after the password is typed again."""
    current = org_for_request(request)
    form = PersonalAccessTokenForm(request.POST or None, request=request, initial={"org": current and current.org})
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            token, secret = create_personal_access_token(
                user=request.user,
                org=data["org"],
                role=data["role"],
                name=data["name"],
                expires_at=form.expires_at(timezone.now()),
            )
        except ValidationError as exc:
            form.add_error(None, exc)
        else:
            url = request.build_absolute_uri(reverse("api:usage", args=[token.org.slug]))
            return secret_page(
                request,
                title="Personal access token created",
                what="personal access token",
                secret=secret,
                back_url=reverse("dashboard:profile"),
                usage_example=f"curl -H 'Authorization: Bearer {secret}' {url}",
            )
    context = {
        "form": form,
        "tokens": _tokens(request),
        "memberships": memberships_for(request.user),
    }
    return render(request, "dashboard/profile.html", context)


@login_required
@require_POST
def revoke_token(request: HttpRequest, pk: int) -> HttpResponse:
    token = get_object_or_404(_tokens(request), pk=pk)
    revoke_personal_access_token(token=token, actor=request.user)
    messages.success(request, f"Token {token.prefix}… revoked.")
    return redirect("dashboard:profile")
