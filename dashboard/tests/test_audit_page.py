from __future__ import annotations

import pytest
from django.urls import reverse

from accounts.actions import audit, revoke_api_key

pytestmark = pytest.mark.django_db


def table(response) -> str:
    """The audit table only (the filter's <select> names every action too)."""
    html = response.text
    return html[html.index('<table id="audit">') : html.index("</table>")] if '<table id="audit">' in html else ""


def test_the_audit_log_lists_this_orgs_changes_newest_first(as_owner, org, key, other_key, owner):
    revoke_api_key(key=key, actor=owner)
    page = table(as_owner.get(reverse("dashboard:audit")))
    assert page.index("API key revoked") < page.index("API key created")
    assert key.prefix in page
    assert other_key.prefix not in page


def test_it_filters_by_action_actor_target_and_date(as_owner, org, key, owner):
    revoke_api_key(key=key, actor=owner)
    audit(org=org, action="deployment.created", target="something-else", actor_label="cli")
    page = table(as_owner.get(reverse("dashboard:audit"), {"action": "key.revoked"}))
    assert "API key revoked" in page and "API key created" not in page
    page = table(as_owner.get(reverse("dashboard:audit"), {"actor": "cli"}))
    assert "something-else" in page and key.prefix not in page
    page = table(as_owner.get(reverse("dashboard:audit"), {"target": "something"}))
    assert "something-else" in page and "API key revoked" not in page
    page = as_owner.get(reverse("dashboard:audit"), {"start": "2000-01-01", "end": "2000-01-02"}).text
    assert "No entry matches" in page


def test_it_paginates(as_owner, org):
    for i in range(60):
        audit(org=org, action="key.updated", target=f"t-{i:03}")
    first = as_owner.get(reverse("dashboard:audit")).text
    assert "Page 1 of 2" in first and "t-059" in first and "t-000" not in first
    second = as_owner.get(reverse("dashboard:audit"), {"page": 2, "action": "key.updated"}).text
    assert "t-000" in second and "action=key.updated&amp;page=1" in second


def test_members_and_outsiders_cannot_read_the_audit_log(as_member, as_outsider, key):
    assert as_member.get(reverse("dashboard:audit")).status_code == 403
    assert key.prefix not in as_outsider.get(reverse("dashboard:audit")).text


def test_invitations_are_audited_in_words(as_owner, org):
    as_owner.post(reverse("dashboard:member_add"), {"email": "new@acme.test", "role": "member"})
    page = table(as_owner.get(reverse("dashboard:audit")))
    assert "Member invited" in page and "new@acme.test" in page
