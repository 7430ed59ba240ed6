"""Playground keys: the API key a dashboard user's playground page calls `/v1` with.

One unrevoked playground key per user and org (a partial unique constraint holds it), named after
the user, made with the org's default key limits and metered like any key. The page asks for its
secret with a POST and keeps it in the tab only: the first ask creates the key, every later one
rotates it with no grace (the secret the tab had is refused at once), so a secret is never shown
twice and a lost one costs nothing. Admins see, pause and revoke playground keys in the key list
like any other; a paused or expired one stays so (rotating changes only the secret), a revoked one
is replaced by a new key on the next ask. Leaving the org revokes the user's playground key
(accounts.actions.remove_member).
"""

from __future__ import annotations

from datetime import timedelta

from django.db import transaction

from .actions import create_api_key
from .keys import rotate_api_key
from .models import ApiKey, Membership, Organization, User

NAME_MAX = 100  # ApiKey.name's max_length


def playground_key_name(user: User) -> str:
    return f"Playground — {user.email}"[:NAME_MAX]


def current_playground_key(org: Organization, user: User) -> ApiKey | None:
    """The user's unrevoked playground key in `org`, if any."""
    return ApiKey.objects.filter(org=org, created_by=user, playground=True, revoked_at__isnull=True).first()


@transaction.atomic
def issue_playground_key(*, membership: Membership) -> tuple[ApiKey, str, bool]:
    """A fresh secret for the member's playground key: (key, secret, created). Creates the key on the
    first call (the org's default key limits, every model the org may use), rotates it (grace 0)
    after that."""
    # One ask at a time per member: two tabs asking at once get one key, rotated twice.
    membership = Membership.objects.select_for_update().select_related("org", "user").get(pk=membership.pk)
    org, user = membership.org, membership.user
    key = current_playground_key(org, user)
    if key is not None:
        key, secret = rotate_api_key(key=key, grace=timedelta(0), actor=user, actor_label="playground")
        return key, secret, False
    defaults = org.key_defaults()
    key, secret = create_api_key(
        org=org,
        name=playground_key_name(user),
        created_by=user,
        actor_label="playground",
        rpm_limit=defaults["rpm_limit"],
        tpm_limit=defaults["tpm_limit"],
        monthly_budget_micros=defaults["monthly_budget_micros"],
    )
    key.playground = True
    key.save(update_fields=["playground"])
    return key, secret, True
