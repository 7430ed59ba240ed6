"""An organisation's own settings: its name, monthly budget, org-wide rate limits and the limits new
keys start with. Owners change them (the dashboard's settings page, PATCH /api/orgs/<org>/settings/);
every change is audited with the values before and after.

The gateway hears of a change through Organization's post_save (proxy/access.py drops the org's
cached keys), so a new budget or limit applies to the next request."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction

from .actions import audit
from .models import AuditAction, Organization, User


def settings_of(org: Organization) -> dict[str, Any]:
    return {name: getattr(org, name) for name in Organization.SETTINGS_FIELDS}


@transaction.atomic
def update_org_settings(
    *, org: Organization, actor: User | None = None, actor_label: str = "", **changes: Any
) -> Organization:
    """Change some of `org`'s settings (Organization.SETTINGS_FIELDS); None clears a limit or budget.

    Bounds are the model fields' validators, as on every other path; a ValidationError names the
    field. The row is locked, so two owners saving at once are audited one after the other with
    what each really changed. Nothing changed writes nothing (no audit entry either)."""
    unknown = set(changes) - set(Organization.SETTINGS_FIELDS)
    if unknown:
        raise ValidationError(f"Cannot change {', '.join(sorted(unknown))} on an organisation.")
    if isinstance(changes.get("name"), str):
        changes["name"] = changes["name"].strip()
    locked = Organization.objects.select_for_update().get(pk=org.pk)
    before = settings_of(locked)
    for name, value in changes.items():
        setattr(locked, name, value)
    locked.clean_settings()
    after = settings_of(locked)  # as cleaned: "5" became 5
    changed = [name for name in Organization.SETTINGS_FIELDS if before[name] != after[name]]
    if changed:
        locked.save(update_fields=changed)
        audit(
            org=locked,
            action=AuditAction.ORG_SETTINGS_UPDATED,
            target=locked.slug,
            actor=actor,
            actor_label=actor_label,
            **{name: {"old": before[name], "new": after[name]} for name in changed},
        )
    for name, value in after.items():  # the caller's copy reads like the row
        setattr(org, name, value)
    return org
