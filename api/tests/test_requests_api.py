"""GET /api/orgs/{org}/requests/: the request log, with the dashboard's filters, scope and bounds."""

from __future__ import annotations

from datetime import timedelta

import pytest

from accounts.actions import create_api_key, create_personal_access_token
from dashboard.tests.request_data import NOW, request_event

pytestmark = pytest.mark.django_db

URL = "/api/orgs/acme/requests/"


@pytest.fixture
def members_key(org, member):
    return create_api_key(org=org, name="max's laptop", created_by=member)[0]


@pytest.fixture
def log(org, key, members_key, deployment, other_org, other_key):
    return {
        "ok": request_event(org, key=key, deployment=deployment, minutes_ago=3),
        "failed": request_event(
            org,
            key=key,
            deployment=deployment,
            minutes_ago=2,
            status_code=502,
            error_code="upstream_error",
            retried=True,
        ),
        "not_found": request_event(
            org, key=members_key, minutes_ago=1, status_code=404, error_code="model_not_found", requested_model="gpt-4o"
        ),
        "globex": request_event(other_org, key=other_key),
    }


def ids(response) -> list[str]:
    assert response.status_code == 200, response.content
    return [row["request_id"] for row in response.json()["results"]]


def test_owners_list_the_org_s_requests_newest_first_with_every_field(api_owner, log, key, deployment):
    body = api_owner.get(URL).json()

    assert [row["request_id"] for row in body["results"]] == [
        log["not_found"].request_id,
        log["failed"].request_id,
        log["ok"].request_id,
    ]
    assert body["next"] is None and body["previous"] is None
    assert body["results"][2] == {
        "request_id": log["ok"].request_id,
        "created_at": (NOW - timedelta(minutes=3)).isoformat().replace("+00:00", "Z"),
        "key": key.id,
        "key_name": "backend",
        "key_prefix": key.prefix,
        "model": deployment.name,
        "deployment": deployment.name,
        "surface": "chat",
        "status_code": 200,
        "error_code": "",
        "input_tokens": 100,
        "output_tokens": 20,
        "usage_estimated": False,
        "cost_micros": 18,
        "ttft_ms": 120,
        "latency_ms": 850,
        "queue_wait_ms": 0,
        "streamed": True,
        "cancelled": False,
        "connector_id": "conn_a1b2c3d4e5f6",
        "retried": False,
        "served_by_fallback": False,
    }
    assert (body["results"][1]["retried"], body["results"][1]["served_by_fallback"]) == (True, False)
    not_found = body["results"][0]
    assert (not_found["model"], not_found["deployment"], not_found["connector_id"]) == ("gpt-4o", None, "")


def test_members_list_the_requests_of_their_own_keys_only(api_member, log, key):
    assert ids(api_member.get(URL)) == [log["not_found"].request_id]
    assert api_member.get(URL, {"key": key.id}).status_code == 400


def test_a_token_acting_as_a_member_sees_only_its_user_s_own_keys(client, owner, org, log, members_key):
    _, secret = create_personal_access_token(user=owner, org=org, role="member", name="read only")
    response = client.get(URL, HTTP_AUTHORIZATION=f"Bearer {secret}")

    # At the member role: the keys the token's user created (`key`), not the member's key
    assert ids(response) == [log["failed"].request_id, log["ok"].request_id]


def test_an_outsider_gets_a_404(api_outsider, log):
    assert api_outsider.get(URL).status_code == 404
    assert ids(api_outsider.get("/api/orgs/globex/requests/")) == [log["globex"].request_id]


def test_the_filters_and_the_search_by_request_id(api_owner, log, key):
    assert ids(api_owner.get(URL, {"errors_only": "true"})) == [log["not_found"].request_id, log["failed"].request_id]
    assert ids(api_owner.get(URL, {"status": 502})) == [log["failed"].request_id]
    assert ids(api_owner.get(URL, {"model": "gpt-4o"})) == [log["not_found"].request_id]
    assert ids(api_owner.get(URL, {"key": key.id, "errors_only": "false"})) == [
        log["failed"].request_id,
        log["ok"].request_id,
    ]
    assert ids(api_owner.get(URL, {"since": "2026-12-05T11:58:30Z"})) == [log["not_found"].request_id]
    assert ids(api_owner.get(URL, {"request_id": log["ok"].request_id})) == [log["ok"].request_id]
    assert ids(api_owner.get(URL, {"request_id": log["globex"].request_id})) == []


def test_next_and_previous_links_walk_the_pages(api_owner, log):
    first = api_owner.get(URL, {"limit": 2}).json()
    assert [r["request_id"] for r in first["results"]] == [log["not_found"].request_id, log["failed"].request_id]
    assert first["previous"] is None and "limit=2" in first["next"]

    second = api_owner.get(first["next"]).json()
    assert [r["request_id"] for r in second["results"]] == [log["ok"].request_id]
    assert second["next"] is None

    back = api_owner.get(second["previous"]).json()
    assert [r["request_id"] for r in back["results"]] == [log["not_found"].request_id, log["failed"].request_id]


@pytest.mark.parametrize(
    "query",
    [
        {"limit": 201},
        {"limit": 0},
        {"status": 600},
        {"status": -1},
        {"key": 2**70},
        {"since": "0001-01-01T00:00:00Z"},
        {"until": "9999-12-31T23:59:59Z"},
        {"since": "2026-13-01T00:00"},
        {"before": "x"},
        {"after": "9" * 41},
        {"request_id": "r" * 65},
        {"model": "\x00"},
    ],
)
def test_values_out_of_bounds_are_a_400_naming_the_parameter(api_owner, log, query):
    response = api_owner.get(URL, query)

    assert response.status_code == 400
    assert set(response.json()) <= set(query) | {"__all__"}
    assert set(response.json()) & set(query)


def test_the_schema_documents_the_endpoint_and_its_bounds(api_owner):
    schema = api_owner.get("/api/schema/?format=json").json()
    operation = schema["paths"]["/api/orgs/{org}/requests/"]["get"]
    parameters = {p["name"]: p["schema"] for p in operation["parameters"]}

    assert parameters["limit"] == {"type": "integer", "minimum": 1, "maximum": 200}
    assert parameters["status"]["minimum"] == 100 and parameters["status"]["maximum"] == 599
    assert parameters["request_id"]["maxLength"] == 64
