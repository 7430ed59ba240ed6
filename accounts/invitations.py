"""Invitations: an emailed link that adds its holder to an org — the only way the dashboard and the API
add anyone. Membership writes themselves go through accounts.actions; the link's absolute URL is the
caller's (it needs the request's host)."""

from __future__ import annotations

from collections.abc import Callable

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.mail import send_mail
from django.db import transaction
from django.template.loader import render_to_string
from django.utils import timezone

from .actions import add_member, audit
from .models import INVITATION_PREFIX, AuditAction, Invitation, Membership, Organization, Role, User
from .secrets import hash_secret, new_secret


def invite_member(
    *,
    org: Organization,
    email: str,
    role: str,
    actor: User | None,
    accept_url: Callable[[str], str],
    actor_label: str = "",
) -> Invitation:
    """E-mail `email` a link to join `org`: nobody becomes a member without accepting.

    Whether the address has an account makes no difference here — same invitation, same e-mail, same
    answer — so adding a member neither reveals who has an account nor puts anyone in an org they did
    not choose. `accept_url(secret)` builds the absolute link (it needs the request's host, which
    actions do not see).
    """
    invitation, _ = invite_member_with_link(
        org=org, email=email, role=role, actor=actor, accept_url=accept_url, actor_label=actor_label
    )
    return invitation


def invite_member_with_link(
    *,
    org: Organization,
    email: str,
    role: str,
    actor: User | None,
    accept_url: Callable[[str], str],
    actor_label: str = "",
) -> tuple[Invitation, str]:
    """invite_member(), also returning the link, for the inviter to copy and send another way. Only
    its hash is stored: show it in the answer to this request, and nowhere else (never log it)."""
    email = User.objects.normalize_email(email).strip().lower()
    if role not in Role.values:
        raise ValidationError(f"Unknown role {role!r}.")
    invitation, secret = invite(org=org, email=email, role=role, actor=actor, actor_label=actor_label)
    link = accept_url(secret)
    send_invitation_email(invitation=invitation, link=link)
    return invitation, link


@transaction.atomic
def invite(
    *, org: Organization, email: str, role: str, actor: User | None, actor_label: str = ""
) -> tuple[Invitation, str]:
    # Both are on the members page the inviter is looking at: saying so reveals nothing.
    if Membership.objects.filter(org=org, user__email__iexact=email).exists():
        raise ValidationError(f"{email} is already a member of {org.name}.")
    if Invitation.objects.for_org(org).pending().filter(email__iexact=email).exists():
        raise ValidationError(f"{email} already has a pending invitation to {org.name}.")
    secret, prefix, token_hash = new_secret(INVITATION_PREFIX)
    invitation = Invitation.objects.create(
        org=org, email=email, role=role, prefix=prefix, token_hash=token_hash, invited_by=actor
    )
    audit(org=org, action=AuditAction.MEMBER_INVITED, target=email, actor=actor, actor_label=actor_label, role=role)
    return invitation, secret


def send_invitation_email(*, invitation: Invitation, link: str) -> None:
    context = {"invitation": invitation, "link": link}
    send_mail(
        subject=f"You are invited to {invitation.org.name} on Tokios",
        message=render_to_string("accounts/email/invitation.txt", context),
        from_email=settings.DEFAULT_FROM_EMAIL,
        recipient_list=[invitation.email],
    )


def find_invitation(secret: str) -> Invitation | None:
    """The invitation a link's secret opens, whatever its state (the page explains expired ones)."""
    if not secret.startswith(INVITATION_PREFIX):
        return None
    return Invitation.objects.select_related("org").filter(token_hash=hash_secret(secret)).first()


@transaction.atomic
def accept_invitation(
    *, invitation: Invitation, user: User | None = None, name: str = "", password: str | None = None
) -> Membership:
    """Join the org: as the signed-in `user` (whose email must match), or as a new account."""
    invitation = Invitation.objects.select_for_update().get(pk=invitation.pk)
    if not invitation.is_pending:
        raise ValidationError(f"This invitation is {invitation.status}.")
    if user is None:
        if User.objects.filter(email__iexact=invitation.email).exists():
            raise ValidationError("An account with this email already exists: sign in to accept.")
        user = User.objects.create_user(invitation.email, password, name=name.strip())
    elif user.email.lower() != invitation.email.lower():
        raise ValidationError(f"This invitation is for {invitation.email}; you are signed in as {user.email}.")
    membership = Membership.objects.filter(org=invitation.org, user=user).first()
    if membership is None:
        membership = add_member(
            org=invitation.org, user=user, role=invitation.role, actor=user, actor_label="invitation"
        )
    invitation.accepted_at = timezone.now()
    invitation.save(update_fields=["accepted_at"])
    return membership


@transaction.atomic
def revoke_invitation(*, invitation: Invitation, actor: User | None = None, actor_label: str = "") -> None:
    if invitation.revoked_at is None and invitation.accepted_at is None:
        invitation.revoked_at = timezone.now()
        invitation.save(update_fields=["revoked_at"])
        audit(
            org=invitation.org,
            action=AuditAction.INVITATION_REVOKED,
            target=invitation.email,
            actor=actor,
            actor_label=actor_label,
        )
