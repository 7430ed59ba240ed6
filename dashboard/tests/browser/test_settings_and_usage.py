"""Organisation settings and the usage breakdown in Chromium, against a real server.

An owner sets the org's budget from the overview's "No monthly budget set" link (an invalid value
first: the error summary takes the focus), and a new key's form starts with the default limits; an
admin sees the settings read-only. Real traffic — requests through the server, a connector and the
fake model server (a test double), plus one for a model nobody serves — is rolled up and shows in
the usage page's breakdowns by model and by key, with the "other" row, the presets and the hourly
narrowing. Screenshots at 390×844 and 1280×800 go to test-artifacts/settings-*.png and usage-*.png."""

from __future__ import annotations

import time

import httpx
import pytest
from playwright.sync_api import expect

from .conftest import PASSWORD, sign_in

pytestmark = pytest.mark.browser

PHONE = {"width": 390, "height": 844}
LAPTOP = {"width": 1280, "height": 800}


def no_sideways_scroll(page) -> None:
    assert page.evaluate("document.documentElement.scrollWidth") <= page.viewport_size["width"]


def both_sizes(page, shot, name: str) -> None:
    for size_name, size in (("phone", PHONE), ("laptop", LAPTOP)):
        page.set_viewport_size(size)
        no_sideways_scroll(page)
        shot(page, f"{name}-{size_name}")


def test_an_owner_sets_the_budget_and_new_key_limits_and_an_admin_reads_them(browser, server, page, acme, shot):
    from accounts.actions import add_member
    from accounts.models import AuditAction, AuditLog, Organization, Role, User

    org, owner = acme
    page.set_viewport_size(PHONE)
    sign_in(page, "owner@acme.test")

    tile = page.locator(".tile", has_text="Budget used")
    expect(tile).to_contain_text("No monthly budget set")
    tile.get_by_role("link", name="Set one").click()
    page.wait_for_url("**/settings/")
    expect(page.get_by_role("heading", level=1)).to_have_text("Settings")
    both_sizes(page, shot, "settings-owner")

    page.set_viewport_size(PHONE)
    page.get_by_label("Monthly budget (USD)", exact=True).fill("-5")
    page.get_by_role("button", name="Save settings").click()
    summary = page.locator("[data-error-summary]")
    expect(summary).to_be_focused()
    expect(summary).to_contain_text("Monthly budget (USD): Ensure this value is greater than or equal to 0")
    both_sizes(page, shot, "settings-invalid")
    assert Organization.objects.get(pk=org.pk).monthly_budget_micros is None

    page.get_by_label("Monthly budget (USD)", exact=True).fill("25")
    page.get_by_label("New keys: requests per minute").fill("60")
    page.get_by_label("New keys: monthly budget (USD)").fill("2.5")
    page.get_by_role("button", name="Save settings").click()
    expect(page.get_by_role("status")).to_contain_text("Settings saved.")
    fresh = Organization.objects.get(pk=org.pk)
    assert (fresh.monthly_budget_micros, fresh.default_key_rpm_limit, fresh.default_key_budget_micros) == (
        25_000_000,
        60,
        2_500_000,
    )
    entry = AuditLog.objects.get(action=AuditAction.ORG_SETTINGS_UPDATED)
    assert entry.detail["monthly_budget_micros"] == {"old": None, "new": 25_000_000}

    page.goto("/")
    expect(page.locator(".tile", has_text="Budget used")).to_contain_text("of $25.00 a month")
    page.goto("/keys/new/")
    expect(page.get_by_label("Requests per minute", exact=True)).to_have_value("60")
    expect(page.get_by_label("Monthly budget (USD)", exact=True)).to_have_value("2.5")
    page.goto("/audit/")
    expect(page.locator("#audit")).to_contain_text("Organisation settings changed")

    admin = User.objects.create_user("admin@acme.test", PASSWORD, name="Ada Admin")
    add_member(org=org, user=admin, role=Role.ADMIN)
    admin_context = browser.new_context(base_url=server.url, viewport=PHONE)
    admin_context.set_default_timeout(10_000)
    admin_page = admin_context.new_page()
    try:
        sign_in(admin_page, "admin@acme.test")
        admin_page.goto("/settings/")
        facts = admin_page.locator("#org-settings")
        expect(facts).to_contain_text("$25.00")
        expect(facts).to_contain_text("60")
        expect(admin_page.get_by_role("button", name="Save settings")).to_have_count(0)
        expect(admin_page.get_by_text("Only owners change these")).to_be_visible()
        both_sizes(admin_page, shot, "settings-admin")
    finally:
        admin_context.close()


def wait_for_events(count: int, timeout: float = 15.0) -> None:
    from billing.models import UsageEvent

    deadline = time.monotonic() + timeout
    while UsageEvent.objects.count() < count:
        assert time.monotonic() < deadline, f"{UsageEvent.objects.count()} usage events, expected {count}"
        time.sleep(0.1)


@pytest.mark.e2e
def test_real_traffic_shows_in_the_breakdowns_by_model_and_key(page, acme, server, start_connector, shot):
    from accounts.actions import create_api_key
    from billing.rollups import roll_up
    from deployments.actions import create_connector_token, create_deployment

    org, owner = acme
    deployment = create_deployment(
        org=org, name="gemma-usage", price_input_micros=1_000_000, price_output_micros=2_000_000
    )
    _, token = create_connector_token(deployment=deployment, name="gpu-box")
    secrets = {name: create_api_key(org=org, name=name, created_by=owner)[1] for name in ("backend", "batch", "ci")}
    start_connector(token)

    sent = [("backend", "gemma-usage")] * 3 + [("batch", "gemma-usage")] * 2 + [("ci", "gpt-4o")]
    for name, model in sent:
        response = httpx.post(
            f"{server.url}/v1/chat/completions",
            json={"model": model, "messages": [{"role": "user", "content": "Hello"}]},
            headers={"Authorization": f"Bearer {secrets[name]}"},
            timeout=30,
        )
        assert response.status_code == (200 if model == "gemma-usage" else 404), response.text[:300]
    wait_for_events(len(sent))
    roll_up()  # what the worker's beat runs every minute

    page.set_viewport_size(LAPTOP)
    sign_in(page, "owner@acme.test")
    page.goto("/usage/")
    page.get_by_role("navigation", name="Date range").get_by_role("link", name="Today").click()
    expect(page.get_by_role("link", name="Today")).to_have_attribute("aria-current", "true")
    expect(page.get_by_role("heading", name="Usage")).to_be_visible()

    by_model = page.locator("#by-model tbody tr")
    expect(by_model).to_have_count(2)
    expect(by_model.nth(0)).to_contain_text("gemma-usage")
    expect(by_model.nth(0).locator("td").first).to_have_text("5")
    expect(by_model.nth(1)).to_contain_text("(unknown model)")
    expect(page.locator("#by-model tfoot")).to_contain_text("6")
    by_key = page.locator("#by-key tbody tr")
    expect(by_key).to_have_count(3)
    expect(by_key.nth(0)).to_contain_text("backend")  # the dearest first
    expect(by_key.nth(0).locator("td").first).to_have_text("3")
    expect(by_key.nth(1)).to_contain_text("batch")
    expect(page.locator("#by-model thead")).to_contain_text("Share of cost")
    both_sizes(page, shot, "usage-breakdown")

    page.set_viewport_size(LAPTOP)
    page.get_by_label("Top models and keys").fill("1")
    page.get_by_role("button", name="Apply").click()
    expect(page.locator("#by-key tbody tr")).to_have_count(2)
    expect(page.locator("#by-key tbody tr").nth(1)).to_contain_text("Other (2 more)")
    expect(page.locator("#by-key tbody tr").nth(1).locator("td").first).to_have_text("3")
    both_sizes(page, shot, "usage-breakdown-top1")

    page.goto("/usage/?period=hour")
    expect(page.locator("#narrowed")).to_contain_text("Per hour shows at most 14 days")
    expect(page.locator("#by-model tbody tr").first).to_contain_text("gemma-usage")
    both_sizes(page, shot, "usage-hourly-narrowed")
