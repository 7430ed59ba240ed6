"""billing/request_log.py below the pages: who sees which events, the cursor's bounds, and the
statement timeout that keeps a search PostgreSQL cannot serve from an index from running on."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from django.core.exceptions import ValidationError
from django.db.models.expressions import RawSQL
from django.http import QueryDict

from accounts.actions import add_member, create_api_key
from accounts.models import Membership, Role, User
from billing import request_log
from billing.models import UsageEvent
from billing.request_log import Cursor, RequestLogFilter, SearchTooSlow, read_bounded, visible_events

from .conftest import make_event

pytestmark = pytest.mark.django_db


@pytest.fixture
def people(org):
    owner = User.objects.create_user("owner@acme.test")
    member = User.objects.create_user("member@acme.test")
    add_member(org=org, user=owner, role=Role.OWNER)
    add_member(org=org, user=member, role=Role.MEMBER)
    return Membership.objects.get(user=owner), Membership.objects.get(user=member)


def test_a_member_sees_the_events_of_the_keys_they_created_and_an_owner_all_of_the_org_s(org, outsider_org, people):
    owner, member = people
    theirs = create_api_key(org=org, name="member's", created_by=member.user)[0]
    others = create_api_key(org=org, name="owner's", created_by=owner.user)[0]
    unowned = create_api_key(org=org, name="made by no one")[0]
    for key in (theirs, others, unowned, None):
        make_event(org=org, key=key)
    make_event(org=outsider_org)

    assert {e.api_key_id for e in visible_events(member)} == {theirs.id}
    assert sorted(visible_events(owner).values_list("api_key_id", flat=True), key=str) == sorted(
        [theirs.id, others.id, unowned.id, None], key=str
    )


def test_a_member_demoted_from_admin_no_longer_sees_the_others_requests(org, people):
    owner, member = people
    make_event(org=org, key=create_api_key(org=org, name="owner's", created_by=owner.user)[0])
    member.role = Role.ADMIN
    assert visible_events(member).count() == 1
    member.role = Role.MEMBER
    assert visible_events(member).count() == 0


@pytest.mark.parametrize(
    "text",
    ["", "1", "-1", "1-", "abc-1", "1-abc", "1.5-2", " 946684800000000-1", "946684800000000-0", "946684799999999-1"],
)
def test_a_cursor_outside_the_log_is_refused(text):
    with pytest.raises(ValidationError):
        Cursor.parse(text)


def test_cursors_cover_2000_to_2999():
    assert Cursor.parse("946684800000000-1") == Cursor(datetime(2000, 1, 1, tzinfo=UTC), 1)
    last = Cursor(datetime(2999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC), 2**63 - 1)
    assert Cursor.parse(str(last)) == last
    with pytest.raises(ValidationError):
        Cursor.parse(f"{int(str(last).split('-')[0]) + 1}-1")


def test_a_search_that_runs_too_long_is_a_form_error_not_a_failure(org, people, monkeypatch):
    owner, _ = people

    def too_slow(events):
        raise SearchTooSlow

    monkeypatch.setattr(request_log, "read_bounded", too_slow)
    form = RequestLogFilter(QueryDict("model=rare"), membership=owner)

    assert form.is_valid()
    assert form.page() is None
    assert "took more than 5 s" in str(form.non_field_errors())


@pytest.mark.postgres
def test_postgresql_stops_a_page_past_the_timeout_and_the_connection_goes_on(org, monkeypatch):
    make_event(org=org)
    monkeypatch.setattr(request_log, "QUERY_TIMEOUT_MS", 50)
    slow = UsageEvent.objects.annotate(nap=RawSQL("pg_sleep(0.5)", ()))

    with pytest.raises(SearchTooSlow):
        read_bounded(slow)

    assert len(read_bounded(UsageEvent.objects.all())) == 1
    assert UsageEvent.objects.count() == 1
