"""Which org a dashboard or API request acts in, what the member may do there, and the one
ownership helper: every object lookup by id goes through `owned_or_404`, so another org's id is a 404.

The current org is kept in the session (the org switcher writes it). A stale tab still acting in the
org it was opened for cannot touch the other org's objects: ids are checked against the current org.

A model is looked up by org through its `org` foreign key, or through the path it declares as
`org_path` (a ConnectorToken reaches its org as "deployment__org"). A model with neither has no
owner to check, and `scoped` refuses it loudly rather than return every row.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import TYPE_CHECKING, Any, TypeVar

from django.contrib.auth.decorators import login_required
from django.core.exceptions import FieldDoesNotExist, PermissionDenied
from django.db import models
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render

from .models import Membership, Organization, PersonalAccessToken, Role, lower_role

if TYPE_CHECKING:
    from .models import User

SESSION_ORG_KEY = "tokios_org_id"
NO_ORG_TEMPLATE = "accounts/no_org.html"

M = TypeVar("M", bound=models.Model)


class OrgRequest(HttpRequest):
    """What `org_view` attaches to the request."""

    user: User
    org: Organization
    membership: Membership


def memberships_for(user: Any) -> models.QuerySet[Membership]:
    return Membership.objects.filter(user=user).select_related("org").order_by("org__name", "org__slug")


def org_for_request(request: HttpRequest) -> Membership | None:
    """The membership of the org the user works in: the one picked in the switcher, else their first."""
    if not request.user.is_authenticated:
        return None
    memberships = memberships_for(request.user)
    chosen = request.session.get(SESSION_ORG_KEY)
    if chosen is not None:
        membership = memberships.filter(org_id=chosen).first()
        if membership is not None:
            return membership
    return memberships.first()


def token_membership(token: PersonalAccessToken) -> Membership | None:
    """The membership a personal access token acts through: its user's in its org, at the lower of
    the token's role and the user's current one; None once the user has left the org.

    The role is lowered on this copy only, for permission checks; nothing saves it."""
    membership = Membership.objects.select_related("org").filter(user_id=token.user_id, org_id=token.org_id).first()
    if membership is not None:
        membership.role = lower_role(token.role, membership.role)
    return membership


def acting_memberships(user: Any, token: PersonalAccessToken | None = None) -> list[Membership]:
    """The orgs an API request may act in, with its role in each: every membership of a signed-in
    user; only its own org, at its effective role, for a personal access token."""
    if token is None:
        return list(memberships_for(user))
    membership = token_membership(token)
    return [membership] if membership is not None else []


def acting_membership(user: Any, slug: str, token: PersonalAccessToken | None = None) -> Membership | None:
    """The membership an API request acts through in the org `slug`, or None (a 404 to the caller)."""
    if token is None:
        return memberships_for(user).filter(org__slug=slug).first()
    membership = token_membership(token)
    return membership if membership is not None and membership.org.slug == slug else None


def select_org(request: HttpRequest, org: Organization) -> None:
    request.session[SESSION_ORG_KEY] = org.id


def can_manage(membership: Membership) -> bool:
    return membership.role in {Role.OWNER, Role.ADMIN}


def require_manager(membership: Membership) -> None:
    if not can_manage(membership):
        raise PermissionDenied("Only owners and admins can do this.")


def assignable_roles(membership: Membership) -> list[str]:
    """Owners hand out any role; admins cannot make owners."""
    if membership.role == Role.OWNER:
        return [Role.OWNER, Role.ADMIN, Role.MEMBER]
    if membership.role == Role.ADMIN:
        return [Role.ADMIN, Role.MEMBER]
    return []


def check_can_manage_member(actor: Membership, target: Membership | None, new_role: str | None = None) -> None:
    """Raise PermissionDenied unless `actor` may set `target`'s role to `new_role` (or remove it).

    Admins manage admins and members; only owners touch owners or make new ones. Keeping one owner
    is the action functions' rule (accounts.actions), not a permission.
    """
    require_manager(actor)
    if target is not None and target.role == Role.OWNER and actor.role != Role.OWNER:
        raise PermissionDenied("Only owners can change or remove an owner.")
    if new_role is not None and new_role not in assignable_roles(actor):
        raise PermissionDenied("Only owners can make owners.")


def org_path(model: type[models.Model]) -> str:
    """The lookup from `model` to the organisation that owns its rows."""
    declared = getattr(model, "org_path", None)
    if isinstance(declared, str):
        return declared
    try:
        field = model._meta.get_field("org")
    except FieldDoesNotExist:
        field = None
    if field is not None and field.is_relation and field.related_model is Organization:
        return "org"
    raise LookupError(f"{model.__name__} has no `org` foreign key and declares no `org_path`")


def scoped(model: type[M], org: Organization) -> models.QuerySet[M]:
    """Every row of `model` that belongs to `org`."""
    return model._default_manager.filter(**{org_path(model): org})


def owned_or_404(model: type[M], org: Organization, **lookup: Any) -> M:
    return get_object_or_404(scoped(model, org), **lookup)


def org_view(view: Callable | None = None, *, manage: bool = False) -> Any:
    """Sign-in required; attach `request.org` and `request.membership`; with `manage`, 403 members.

    The check runs for every method, so a member's hand-made POST is refused like the page is.
    """

    def decorator(func: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
        @login_required
        @wraps(func)
        def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            membership = org_for_request(request)
            if membership is None:
                return render(request, NO_ORG_TEMPLATE, status=200)
            if manage:
                require_manager(membership)
            request.org = membership.org  # type: ignore[attr-defined]
            request.membership = membership  # type: ignore[attr-defined]
            return func(request, *args, **kwargs)

        wrapper.manage_required = manage  # type: ignore[attr-defined]
        return wrapper

    if view is not None:
        return decorator(view)
    return decorator
