"""The alerts page: rules, webhooks (secret shown once), recent alerts and the delivery log."""

from __future__ import annotations

import pytest
from django.urls import reverse

from alerts.actions import create_endpoint, send_test
from alerts.delivery import attempt
from alerts.models import AlertSettings, DeliveryAttempt, WebhookEndpoint
from alerts.webhooks import PostResult

pytestmark = pytest.mark.django_db

PAGE = reverse("dashboard:alerts")


@pytest.fixture(autouse=True)
def public_only(settings):
    settings.WEBHOOK_ALLOW_PRIVATE = False
    settings.WEBHOOK_ALLOW_HTTP = False


@pytest.fixture
def hook(org):
    endpoint, _ = create_endpoint(org=org, url="https://hooks.example.com/tokios/abc", description="pager")
    return endpoint


def test_the_page_shows_webhooks_alerts_and_every_delivery_attempt(as_admin, hook, monkeypatch):
    raised = send_test(endpoint=hook)
    monkeypatch.setattr("alerts.delivery.post", lambda *args: PostResult(False, 500, "HTTP 500", "upstream down", 7))
    attempt(raised.deliveries[0])

    page = as_admin.get(PAGE).text
    assert "hooks.example.com" in page and "pager" in page and hook.prefix in page
    assert "a test alert from Tokios" in page
    assert "#1 HTTP 500" in page and "upstream down" in page
    assert 'style="' not in page and "<script>" not in page  # the strict CSP allows neither


def test_adding_a_webhook_shows_its_secret_once(as_owner, org):
    response = as_owner.post(reverse("dashboard:alert_webhook_create"), {"url": "https://hooks.example.com/x"})
    assert response.status_code == 201 and "no-store" in response["Cache-Control"]
    endpoint = WebhookEndpoint.objects.get(org=org)
    secret = response.context["secret"]
    assert secret.startswith(endpoint.prefix) and secret in response.text
    assert secret not in as_owner.get(PAGE).text


def test_an_unsafe_url_is_refused_with_a_message(as_owner, org):
    response = as_owner.post(reverse("dashboard:alert_webhook_create"), {"url": "https://10.0.0.1/x"})
    assert response.status_code == 400
    assert "public address" in response.text
    assert not WebhookEndpoint.objects.exists()


def test_rules_are_saved_within_bounds(as_owner, org):
    form = {
        "email_enabled": "on",
        "budget_enabled": "on",
        "budget_thresholds": "100, 75%",
        "connector_down_enabled": "on",
        "connector_down_minutes": "30",
        "flapping_connects": "5",
        "flapping_window_minutes": "15",
        "error_rate_percent": "10",
        "error_rate_window_minutes": "15",
        "error_rate_min_requests": "20",
    }
    assert as_owner.post(reverse("dashboard:alert_settings"), form).status_code == 302
    rules = AlertSettings.objects.get(org=org)
    assert rules.budget_thresholds == [75, 100] and rules.connector_down_minutes == 30
    assert not rules.flapping_enabled and not rules.error_rate_enabled

    for bad in ({"budget_thresholds": "0"}, {"budget_thresholds": "abc"}, {"connector_down_minutes": "10081"}):
        response = as_owner.post(reverse("dashboard:alert_settings"), {**form, **bad})
        assert response.status_code == 400, bad
    assert AlertSettings.objects.get(org=org).connector_down_minutes == 30


def test_rotate_toggle_test_and_delete(as_owner, hook):
    old_prefix = hook.prefix
    response = as_owner.post(reverse("dashboard:alert_webhook_rotate", args=[hook.pk]))
    assert response.status_code == 201
    hook.refresh_from_db()
    assert hook.prefix != old_prefix and response.context["secret"].startswith(hook.prefix)

    as_owner.post(reverse("dashboard:alert_webhook_toggle", args=[hook.pk]))
    hook.refresh_from_db()
    assert hook.enabled is False

    assert as_owner.post(reverse("dashboard:alert_webhook_test", args=[hook.pk])).status_code == 302
    assert as_owner.post(reverse("dashboard:alert_webhook_delete", args=[hook.pk])).status_code == 302
    assert not WebhookEndpoint.objects.exists()


def test_members_get_403_and_outsiders_see_nothing_of_acme(as_member, as_outsider, hook):
    send_test(endpoint=hook)
    assert as_member.get(PAGE).status_code == 403
    page = as_outsider.get(PAGE).text
    assert "hooks.example.com" not in page and "test alert" not in page
    for name in ("alert_webhook_rotate", "alert_webhook_delete", "alert_webhook_toggle", "alert_webhook_test"):
        assert as_outsider.post(reverse(f"dashboard:{name}", args=[hook.pk])).status_code == 404, name
    assert WebhookEndpoint.objects.get().enabled is True


def test_the_page_costs_a_bounded_number_of_queries(as_owner, hook, org, django_assert_max_num_queries):
    for _ in range(10):
        raised = send_test(endpoint=hook)
        DeliveryAttempt.objects.create(delivery_id=raised.deliveries[0], number=1, error="x")
    with django_assert_max_num_queries(14):
        assert as_owner.get(PAGE).status_code == 200
