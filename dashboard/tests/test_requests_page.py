"""The request log page (/requests/) and a request's page (/requests/<id>/): owners and admins see
every request of their org, a member the requests of the keys they created, an outsider nothing;
filters, search by request id and keyset pages, every bound a 400."""

from __future__ import annotations

from datetime import timedelta
from urllib.parse import parse_qs

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from accounts.actions import create_api_key
from billing.request_log import Cursor
from deployments.actions import create_deployment

from .request_data import NOW, request_event

pytestmark = pytest.mark.django_db
URL = reverse("dashboard:requests")


@pytest.fixture
def members_key(org, member):
    return create_api_key(org=org, name="max's laptop", created_by=member)[0]


@pytest.fixture
def log(org, key, members_key, deployment, other_org, other_key):
    """acme: a 200 and a 502 by the owner's key, a 404 and a 403 by the member's; globex: one request;
    and a request refused with 401 (no org)."""
    return {
        "ok": request_event(org, key=key, deployment=deployment, minutes_ago=4, cost_micros=1_234_567),
        "failed": request_event(
            org, key=key, deployment=deployment, minutes_ago=3, status_code=502, error_code="upstream_error"
        ),
        "not_found": request_event(
            org, key=members_key, minutes_ago=2, status_code=404, error_code="model_not_found", requested_model="gpt-4o"
        ),
        "forbidden": request_event(
            org, key=members_key, minutes_ago=1, status_code=403, error_code="model_not_allowed", requested_model="x"
        ),
        "globex": request_event(other_org, key=other_key, minutes_ago=0, requested_model="globex-llama"),
        "unauthenticated": request_event(None, minutes_ago=0, status_code=401, error_code="invalid_api_key"),
    }


def ids(response) -> list[str]:
    return [event.request_id for event in response.context["page"].events]


def test_owners_see_every_request_of_their_org_newest_first_with_what_the_log_promises(as_owner, log, key):
    response = as_owner.get(URL)

    assert response.status_code == 200
    assert ids(response) == [log[name].request_id for name in ("forbidden", "not_found", "failed", "ok")]
    row = response.text.split(f'data-request-id="{log["ok"].request_id}"')[1].split("</tr>")[0]
    for shown in (
        "2026-12-05 11:56:00",
        ">backend</span><br><code>",
        f"{key.prefix}…",
        "gemma-tunnel",
        ">200<",
        "100 / 20",
        "$1.23",
        "120 ms",
        "850 ms",
        "conn_a1b2c3d4e5f6",
        reverse("dashboard:request_detail", args=[log["ok"].request_id]),
    ):
        assert shown in row, shown
    assert "upstream_error" in response.text and "model_not_found" in response.text
    assert "<code>gpt-4o</code>" in response.text  # the 404's model: no deployment has it
    assert log["globex"].request_id not in response.text
    assert "kept for 90 days" in response.text


def test_admins_see_the_org_s_requests_too(as_admin, log):
    assert len(ids(as_admin.get(URL))) == 4


def test_members_see_only_the_requests_of_the_keys_they_created(as_member, log, key, members_key):
    response = as_member.get(URL)

    assert ids(response) == [log["forbidden"].request_id, log["not_found"].request_id]
    assert "made with the API keys you created" in response.text
    assert [k.id for k in response.context["form"].fields["key"].queryset] == [members_key.id]
    assert as_member.get(URL, {"key": key.id}).status_code == 400  # not a key they may pick
    assert ids(as_member.get(URL, {"request_id": log["ok"].request_id})) == []


def test_a_member_without_keys_sees_an_empty_log(as_member, log, members_key):
    members_key.delete()

    response = as_member.get(URL)

    assert response.status_code == 200 and ids(response) == []
    assert "No request here" in response.text


def test_an_outsider_sees_none_of_acme_s_requests(as_outsider, log):
    assert ids(as_outsider.get(URL)) == [log["globex"].request_id]
    assert as_outsider.get(URL, {"request_id": log["ok"].request_id}).context["page"].events == []


def test_a_request_s_page_shows_it_to_whoever_may_see_it_and_404s_for_everyone_else(
    as_owner, as_member, as_outsider, log
):
    ok, mine = log["ok"].request_id, log["not_found"].request_id

    page = as_owner.get(reverse("dashboard:request_detail", args=[ok]))
    assert page.status_code == 200
    assert "gemma-tunnel" in page.text and "conn_a1b2c3d4e5f6" in page.text and "850 ms" in page.text
    assert as_member.get(reverse("dashboard:request_detail", args=[mine])).status_code == 200
    assert "gpt-4o" in as_member.get(reverse("dashboard:request_detail", args=[mine])).text
    assert as_member.get(reverse("dashboard:request_detail", args=[ok])).status_code == 404
    assert as_outsider.get(reverse("dashboard:request_detail", args=[ok])).status_code == 404
    assert as_owner.get(reverse("dashboard:request_detail", args=[log["globex"].request_id])).status_code == 404
    assert as_owner.get(reverse("dashboard:request_detail", args=["req_nope"])).status_code == 404
    assert as_owner.get(f"{URL}req%00x/").status_code == 404  # no id has such a character: no query


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({"status": "404"}, ["not_found"]),
        ({"errors_only": "on"}, ["forbidden", "not_found", "failed"]),
        ({"model": "gpt-4o"}, ["not_found"]),
        ({"model": "gemma-tunnel"}, ["failed", "ok"]),
        ({"since": "2026-12-05T11:57", "until": "2026-12-05T11:59"}, ["not_found", "failed"]),
        ({"since": "2026-12-05T11:57:00Z"}, ["forbidden", "not_found", "failed"]),
        ({"errors_only": "on", "model": "gemma-tunnel"}, ["failed"]),
    ],
)
def test_filters_narrow_the_log(as_owner, log, query, expected):
    response = as_owner.get(URL, query)

    assert response.status_code == 200
    assert ids(response) == [log[name].request_id for name in expected]


def test_the_key_filter_and_the_search_by_request_id(as_owner, log, key):
    assert ids(as_owner.get(URL, {"key": key.id})) == [log["failed"].request_id, log["ok"].request_id]
    wanted = log["failed"].request_id
    assert ids(as_owner.get(URL, {"request_id": wanted})) == [wanted]
    assert ids(as_owner.get(URL, {"request_id": f"  {wanted} "})) == [wanted]  # pasted with spaces
    assert ids(as_owner.get(URL, {"request_id": wanted[:-1]})) == []  # exact, not a prefix


def test_events_written_before_the_model_name_was_stored_match_their_deployment_s_name(as_owner, org, key, deployment):
    old = request_event(org, key=key, deployment=deployment, requested_model="")

    response = as_owner.get(URL, {"model": deployment.name})

    assert ids(response) == [old.request_id]
    assert f"<code>{deployment.name}</code>" in response.text


@pytest.mark.parametrize(
    "query",
    [
        {"status": "99"},
        {"status": "600"},
        {"status": str(2**64)},
        {"limit": "0"},
        {"limit": "201"},
        {"since": "1999-12-31T23:59"},
        {"until": "3000-01-01T00:00"},
        {"since": "9999-12-31T23:59:59-23:59"},
        {"since": "2026-12-05T12:00", "until": "2026-12-05T11:00"},
        {"request_id": "r" * 65},
        {"request_id": "req_\x00"},
        {"model": "m" * 201},
        {"before": "nonsense"},
        {"before": f"{10**17}-1"},
        {"before": "1-1"},
        {"before": f"1764936000000000-{2**63}"},
        {"before": "1764936000000000-1", "after": "1764936000000000-2"},
    ],
)
def test_a_value_out_of_bounds_is_a_400_with_the_reason(as_owner, log, query):
    response = as_owner.get(URL, query)

    assert response.status_code == 400
    assert response.context["form"].errors
    assert "page" not in response.context


def test_pages_go_back_by_keyset_and_forward_again(as_owner, org, key, deployment):
    same_instant = NOW - timedelta(minutes=30)
    events = [request_event(org, key=key, deployment=deployment, minutes_ago=m) for m in range(5)]
    events += [request_event(org, key=key, deployment=deployment, at=same_instant) for _ in range(3)]
    newest_first = [e.request_id for e in sorted(events, key=lambda e: (e.created_at, e.id), reverse=True)]

    first = as_owner.get(URL, {"limit": "3", "key": key.id})
    assert ids(first) == newest_first[:3]
    assert first.context["page"].newer is None
    older = parse_qs(first.context["older_query"])
    assert older["limit"] == ["3"] and older["key"] == [str(key.id)]
    second = as_owner.get(URL, older)
    assert ids(second) == newest_first[3:6]  # two of the three at one instant: ties go by id
    third = as_owner.get(URL, parse_qs(second.context["older_query"]))
    assert ids(third) == newest_first[6:]
    assert third.context["page"].older is None
    back = as_owner.get(URL, parse_qs(third.context["newer_query"]))
    assert ids(back) == newest_first[3:6]
    assert ids(as_owner.get(URL, parse_qs(back.context["newer_query"]))) == newest_first[:3]
    assert 'rel="next"' in first.text and "Newest" in second.text


def test_a_cursor_names_an_instant_to_the_microsecond_and_an_id():
    moment = NOW + timedelta(microseconds=7)
    assert Cursor.parse(str(Cursor(moment, 42))) == Cursor(moment, 42)


def queries(client, **query) -> tuple[int, int]:
    """(queries, rows) of one page."""
    with CaptureQueriesContext(connection) as captured:
        response = client.get(URL, query)
    return len(captured.captured_queries), len(ids(response))


def test_the_page_costs_the_same_queries_whatever_it_shows(as_owner, as_member, org, key, members_key, deployment):
    request_event(org, key=members_key, deployment=deployment)
    as_owner.get(URL)  # the session, warmed
    as_member.get(URL)
    one_row, member_one_row = queries(as_owner, limit=1), queries(as_member, limit=1)
    for minutes in range(1, 60):
        request_event(org, key=key if minutes % 2 else members_key, deployment=deployment, minutes_ago=minutes)

    assert queries(as_owner, limit=200) == (one_row[0], 60)
    assert queries(as_owner, limit=50, errors_only="on") == (one_row[0], 0)
    assert queries(as_member, limit=200) == (member_one_row[0], 30)
    # + the member's own keys, for the scope; on PostgreSQL, + 3 for the statement timeout (in a savepoint)
    assert one_row[0] <= (13 if connection.vendor == "postgresql" else 10)
    assert member_one_row[0] == one_row[0] + 1


def test_the_nav_links_the_request_log_for_every_role(as_member, log):
    response = as_member.get(reverse("dashboard:overview"))
    assert f'href="{URL}"' in response.text


def test_a_deployment_of_another_org_named_like_the_filter_does_not_widen_it(as_owner, log, other_org):
    create_deployment(org=other_org, name="gpt-4o")  # now a deployment has that name, in globex

    assert ids(as_owner.get(URL, {"model": "gpt-4o"})) == [log["not_found"].request_id]


def test_the_page_says_how_long_requests_are_kept_as_usage_retention_does(as_owner, log, settings):
    settings.USAGE_RETENTION_DAYS = 30
    assert "Requests are kept for 30 days, as usage events are" in as_owner.get(URL).text
    settings.USAGE_RETENTION_DAYS = 0  # never pruned
    assert "keeps requests, as usage events, until an operator deletes them" in as_owner.get(URL).text


def test_a_request_that_waited_for_a_slot_says_how_long(as_owner, org, key, deployment):
    waited = request_event(org, key=key, deployment=deployment, queue_wait_ms=2500, latency_ms=3100)

    assert "3,100 ms<br><small>queued 2,500 ms</small>" in as_owner.get(URL).text
    detail = as_owner.get(reverse("dashboard:request_detail", args=[waited.request_id])).text
    assert "2,500 ms, in the queue for a free slot" in detail


def test_a_retried_request_and_one_a_fallback_served_say_so(as_owner, org, key, deployment):
    backup = create_deployment(org=org, name="gemma-backup")
    retried = request_event(org, key=key, deployment=deployment, minutes_ago=2, retried=True)
    fallback = request_event(
        org, key=key, deployment=backup, minutes_ago=1, served_by_fallback=True, requested_model=deployment.name
    )
    plain = request_event(org, key=key, deployment=deployment, minutes_ago=3)

    response = as_owner.get(URL)

    def row(event) -> str:
        return response.text.split(f'data-request-id="{event.request_id}"')[1].split("</tr>")[0]

    assert "retried" in row(retried) and "fallback" not in row(retried)
    assert "fallback: <code>gemma-backup</code>" in row(fallback) and "retried" not in row(fallback)
    assert "retried" not in row(plain) and "fallback" not in row(plain)
    detail = as_owner.get(reverse("dashboard:request_detail", args=[fallback.request_id]))
    assert "Served by fallback" in detail.text and "gemma-backup" in detail.text
