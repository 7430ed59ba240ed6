"""The organisation's settings: budget, org-wide limits, the limits new keys start with, and a summary
of its alert rules (edited on the alerts page). Owners change them; admins read them; members 403."""

from __future__ import annotations

from django.contrib import messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import HttpResponse
from django.shortcuts import redirect, render

from accounts.models import Membership, Role
from accounts.org_settings import update_org_settings
from accounts.tenancy import OrgRequest, org_view, scoped
from alerts.models import AlertSettings
from billing.queries import month_to_date

from ..org_forms import OrgSettingsForm


@org_view(manage=True)
def org_settings(request: OrgRequest) -> HttpResponse:
    org = request.org
    is_owner = request.membership.role == Role.OWNER
    form = None
    status = 200
    if request.method == "POST":
        if not is_owner:
            raise PermissionDenied("Only owners can change the organisation's settings.")
        form = OrgSettingsForm.for_org(org, request.POST)
        if form.is_valid():
            try:
                update_org_settings(org=org, actor=request.user, **form.settings())
            except ValidationError as exc:
                form.add_error(None, exc)  # a message per field: the form's fields have the model's names
            else:
                messages.success(request, "Settings saved.")
                return redirect("dashboard:org_settings")
        status = 400
    elif is_owner:
        form = OrgSettingsForm.for_org(org)
    context = {
        "form": form,
        "is_owner": is_owner,
        "month": month_to_date(org),
        "alert_rules": AlertSettings.for_org(org),
        "owners": [] if is_owner else scoped(Membership, org).filter(role=Role.OWNER).select_related("user"),
    }
    return render(request, "dashboard/org_settings.html", context, status=status)
