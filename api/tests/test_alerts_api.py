"""`/api/orgs/{org}/alerts/…`: settings, webhook endpoints, alerts raised and the delivery log."""

from __future__ import annotations

import pytest

from alerts.actions import create_endpoint, send_test
from alerts.delivery import attempt
from alerts.models import Alert, AlertSettings, Delivery, WebhookEndpoint
from alerts.webhooks import PostResult

pytestmark = pytest.mark.django_db

BASE = "/api/orgs/acme/alerts"


@pytest.fixture(autouse=True)
def public_only(settings):
    settings.WEBHOOK_ALLOW_PRIVATE = False
    settings.WEBHOOK_ALLOW_HTTP = False


@pytest.fixture
def hook(org):
    endpoint, secret = create_endpoint(org=org, url="https://hooks.example.com/tokios/abc")
    endpoint.secret = secret
    return endpoint


def test_settings_start_at_the_defaults_and_change_in_bounds(api_admin, org):
    body = api_admin.get(f"{BASE}/settings/").json()
    assert body["budget_thresholds"] == [50, 80, 100] and body["connector_down_minutes"] == 5

    response = api_admin.patch(
        f"{BASE}/settings/", {"budget_thresholds": [100, 90], "connector_down_minutes": 10080}, format="json"
    )
    assert response.status_code == 200, response.json()
    assert response.json()["budget_thresholds"] == [90, 100]
    assert AlertSettings.objects.get(org=org).connector_down_minutes == 10080


@pytest.mark.parametrize(
    "change",
    [
        {"budget_thresholds": [0]},
        {"budget_thresholds": [1001]},
        {"budget_thresholds": list(range(1, 12))},
        {"budget_thresholds": [50, 50]},
        {"budget_thresholds": "50,80"},
        {"budget_thresholds": [10**30]},
        {"connector_down_minutes": 0},
        {"connector_down_minutes": 10081},
        {"connector_down_minutes": 10**30},
        {"flapping_connects": 1},
        {"error_rate_percent": 101},
        {"error_rate_window_minutes": 1441},
        {"error_rate_min_requests": -1},
    ],
)
def test_settings_out_of_bounds_are_a_400(api_owner, org, change):
    response = api_owner.patch(f"{BASE}/settings/", change, format="json")
    assert response.status_code == 400, response.content
    assert set(response.json()) == set(change)
    assert not AlertSettings.objects.filter(org=org).exists()


def test_a_webhook_secret_is_shown_at_creation_only(api_admin, org):
    response = api_admin.post(f"{BASE}/webhooks/", {"url": "https://hooks.example.com/t", "description": "ops"})
    assert response.status_code == 201, response.json()
    created = response.json()
    assert created["secret"].startswith(created["prefix"]) and "no-store" in response["Cache-Control"]

    listed = api_admin.get(f"{BASE}/webhooks/").json()["results"]
    assert [e["id"] for e in listed] == [created["id"]]
    assert "secret" not in listed[0] and created["secret"] not in str(listed)
    assert created["secret"] not in str(api_admin.get(f"{BASE}/webhooks/{created['id']}/").json())


@pytest.mark.parametrize(
    "url",
    ["http://hooks.example.com/t", "https://169.254.169.254/latest", "https://u:p@hooks.example.com/", "x" * 3000],
)
def test_unsafe_webhook_urls_are_a_400(api_admin, org, hook, url):
    assert api_admin.post(f"{BASE}/webhooks/", {"url": url}).status_code == 400
    assert api_admin.patch(f"{BASE}/webhooks/{hook.pk}/", {"url": url}).status_code == 400
    assert list(WebhookEndpoint.objects.values_list("url", flat=True)) == [hook.url]


def test_rotating_returns_a_new_secret_and_test_sends_a_test_alert(api_admin, hook):
    rotated = api_admin.post(f"{BASE}/webhooks/{hook.pk}/rotate/").json()
    assert rotated["secret"] != hook.secret and rotated["secret"].startswith(rotated["prefix"])

    sent = api_admin.post(f"{BASE}/webhooks/{hook.pk}/test/")
    assert sent.status_code == 202
    assert Delivery.objects.get(pk=sent.json()["delivery"]).endpoint == hook


def test_an_endpoint_can_be_disabled_and_deleted(api_admin, hook):
    assert api_admin.patch(f"{BASE}/webhooks/{hook.pk}/", {"enabled": False}).json()["enabled"] is False
    assert api_admin.delete(f"{BASE}/webhooks/{hook.pk}/").status_code == 204
    assert not WebhookEndpoint.objects.exists()


def test_the_history_and_the_delivery_log_list_every_attempt(api_admin, hook, monkeypatch):
    raised = send_test(endpoint=hook)
    monkeypatch.setattr("alerts.delivery.post", lambda url, body, headers: _failed())
    attempt(raised.deliveries[0])

    [alert] = api_admin.get(f"{BASE}/history/").json()["results"]
    assert alert["event"] == "test.firing"
    [delivery] = api_admin.get(f"{BASE}/deliveries/").json()["results"]
    assert delivery["event"] == "test.firing" and delivery["status"] == "pending" and delivery["attempts"] == 1
    assert delivery["attempt_log"][0] == {
        **delivery["attempt_log"][0],
        "number": 1,
        "ok": False,
        "http_status": 502,
        "error": "HTTP 502",
        "response_excerpt": "bad gateway",
    }


def _failed():
    return PostResult(ok=False, http_status=502, error="HTTP 502", excerpt="bad gateway", duration_ms=12)


def test_members_get_403_and_outsiders_404(api_member, api_outsider, hook):
    send_test(endpoint=hook)
    for path in ("settings/", "webhooks/", f"webhooks/{hook.pk}/", "history/", "deliveries/"):
        assert api_member.get(f"{BASE}/{path}").status_code == 403, path
        assert api_outsider.get(f"{BASE}/{path}").status_code == 404, path
    assert api_outsider.get(f"/api/orgs/globex/alerts/webhooks/{hook.pk}/").status_code == 404
    assert api_outsider.post(f"/api/orgs/globex/alerts/webhooks/{hook.pk}/rotate/").status_code == 404
    alert = Alert.objects.get()
    assert api_outsider.get(f"/api/orgs/globex/alerts/history/{alert.pk}/").status_code == 404
    assert api_outsider.get("/api/orgs/globex/alerts/deliveries/").json()["results"] == []


def test_the_schema_describes_the_alert_endpoints(client, owner):
    client.force_login(owner)
    paths = client.get("/api/schema/", HTTP_ACCEPT="application/json").json()["paths"]
    for path in ("settings/", "webhooks/", "webhooks/{id}/rotate/", "webhooks/{id}/test/", "history/", "deliveries/"):
        assert f"/api/orgs/{{org}}/alerts/{path}" in paths, path
