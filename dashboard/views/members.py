"""Members and invitations. Owners and admins manage; only owners touch owners (accounts.tenancy).
Adding someone is always an invitation they accept (accounts.invitations)."""

from __future__ import annotations

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.cache import add_never_cache_headers
from django.views.decorators.http import require_POST

from accounts.actions import change_role, remove_member, rotate_share_id
from accounts.invitations import invite_member_with_link, revoke_invitation
from accounts.models import Invitation, Membership
from accounts.tenancy import OrgRequest, assignable_roles, check_can_manage_member, org_view, owned_or_404

from ..forms import MemberAddForm, RoleForm


def invitation_link_builder(request):
    return lambda secret: request.build_absolute_uri(reverse("dashboard:accept_invitation", args=[secret]))


def _context(request: OrgRequest, form: MemberAddForm | None = None) -> dict:
    return {
        "memberships": Membership.objects.filter(org=request.org).select_related("user").order_by("user__email"),
        "invitations": Invitation.objects.for_org(request.org).pending().select_related("invited_by"),
        "form": form or MemberAddForm(roles=assignable_roles(request.membership)),
        "roles": assignable_roles(request.membership),
        "share_id": request.org.share_id,
    }


@org_view(manage=True)
def member_list(request: OrgRequest) -> HttpResponse:
    return render(request, "dashboard/members.html", _context(request))


@org_view(manage=True)
@require_POST
def member_add(request: OrgRequest) -> HttpResponse:
    form = MemberAddForm(request.POST, roles=assignable_roles(request.membership))
    if form.is_valid():
        check_can_manage_member(request.membership, None, form.cleaned_data["role"])
        try:
            invitation, link = invite_member_with_link(
                org=request.org,
                email=form.cleaned_data["email"],
                role=form.cleaned_data["role"],
                actor=request.user,
                accept_url=invitation_link_builder(request),
            )
        except ValidationError as exc:
            form.add_error("email", exc)
        else:
            # The same words whether the address has an account or not (accounts.invitations).
            messages.success(request, f"Invitation sent to {invitation.email}; the link works for 7 days.")
            return invitation_created_page(request, invitation=invitation, link=link)
    return render(request, "dashboard/members.html", _context(request, form))


def invitation_created_page(request: OrgRequest, *, invitation: Invitation, link: str) -> HttpResponse:
    """The link, once, for the inviter to send another way when e-mail may not arrive. Like a new key:
    rendered from the POST, never stored (only its hash is), kept out of every cache."""
    response = render(
        request, "dashboard/invitation_created.html", {"invitation": invitation, "link": link}, status=201
    )
    add_never_cache_headers(response)
    response["Cache-Control"] = "no-store, private"
    return response


@org_view(manage=True)
@require_POST
def member_role(request: OrgRequest, pk: int) -> HttpResponse:
    membership = owned_or_404(Membership, request.org, pk=pk)
    form = RoleForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Pick a role.")
        return redirect("dashboard:members")
    check_can_manage_member(request.membership, membership, form.cleaned_data["role"])
    try:
        change_role(membership=membership, role=form.cleaned_data["role"], actor=request.user)
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
    else:
        messages.success(request, f"{membership.user.email} is now {membership.get_role_display().lower()}.")
    return redirect("dashboard:members")


@org_view(manage=True)
def member_remove(request: OrgRequest, pk: int) -> HttpResponse:
    membership = owned_or_404(Membership, request.org, pk=pk)
    check_can_manage_member(request.membership, membership)
    if request.method == "POST":
        try:
            remove_member(membership=membership, actor=request.user)
        except ValidationError as exc:
            messages.error(request, " ".join(exc.messages))
        else:
            messages.success(request, f"{membership.user.email} removed from {request.org.name}.")
            if membership.user_id == request.user.id:
                return redirect("dashboard:overview")
        return redirect("dashboard:members")
    return render(
        request,
        "dashboard/confirm.html",
        {
            "title": f"Remove {membership.user.email} from {request.org.name}?",
            "body": "They lose access to this organisation's dashboard at once. API keys they created keep working "
            "until you revoke them.",
            "action": "Remove member",
            "cancel_url": reverse("dashboard:members"),
        },
    )


@org_view(manage=True)
@require_POST
def invitation_revoke(request: OrgRequest, pk: int) -> HttpResponse:
    invitation = owned_or_404(Invitation, request.org, pk=pk)
    if invitation.role == "owner":
        check_can_manage_member(request.membership, None, "owner")
    revoke_invitation(invitation=invitation, actor=request.user)
    messages.success(request, f"Invitation for {invitation.email} revoked.")
    return redirect("dashboard:members")


@org_view(manage=True)
@require_POST
def share_id_rotate(request: OrgRequest) -> HttpResponse:
    rotate_share_id(org=request.org, actor=request.user)
    messages.success(
        request, "New share ID made. The old one no longer finds this organisation; models already shared stay."
    )
    return redirect("dashboard:members")
