from __future__ import annotations

from django.http import HttpRequest
from django.utils.functional import SimpleLazyObject

from accounts.tenancy import can_manage, memberships_for, org_for_request


def org(request: HttpRequest) -> dict:
    """The org switcher and navigation: the current membership (set by `org_view`, else looked up)."""
    if not getattr(request, "user", None) or not request.user.is_authenticated:
        return {}

    def current():
        return getattr(request, "membership", None) or org_for_request(request)

    membership = SimpleLazyObject(current)
    return {
        "current_membership": membership,
        "current_can_manage": SimpleLazyObject(lambda: bool(current() and can_manage(current()))),
        "org_memberships": SimpleLazyObject(lambda: list(memberships_for(request.user))),
    }
