"""Sign in and out, password reset, invitations, the org switcher and the profile (with tokens)."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse, reverse_lazy
from django.utils import timezone
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_POST

from accounts.actions import create_personal_access_token, revoke_personal_access_token
from accounts.invitations import accept_invitation, find_invitation
from accounts.models import PersonalAccessToken, User
from accounts.tenancy import memberships_for, select_org

from ..forms import AcceptInvitationForm, PersonalAccessTokenForm
from .common import secret_page


class LoginView(auth_views.LoginView):
    template_name = "registration/login.html"
    redirect_authenticated_user = True


class LogoutView(auth_views.LogoutView):
    pass


class PasswordResetView(auth_views.PasswordResetView):
    email_template_name = "registration/password_reset_email.txt"
    subject_template_name = "registration/password_reset_subject.txt"
    success_url = reverse_lazy("dashboard:password_reset_done")


class PasswordResetConfirmView(auth_views.PasswordResetConfirmView):
    success_url = reverse_lazy("dashboard:password_reset_complete")


class PasswordChangeView(auth_views.PasswordChangeView):
    success_url = reverse_lazy("dashboard:password_change_done")


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
    return PersonalAccessToken.objects.for_user(request.user)


@login_required
def profile(request: HttpRequest) -> HttpResponse:
    form = PersonalAccessTokenForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        token, secret = create_personal_access_token(
            user=request.user, name=form.cleaned_data["name"], expires_at=form.expires_at(timezone.now())
        )
        return secret_page(
            request,
            title="Personal access token created",
            what="personal access token",
            secret=secret,
            back_url=reverse("dashboard:profile"),
            usage_example=f"curl -H 'Authorization: Bearer {secret}' {request.build_absolute_uri('/api/orgs/')}",
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
