from __future__ import annotations

import re
from datetime import date, timedelta

import httpx
import pytest
from playwright.sync_api import expect

from accounts.models import ApiKey

from .conftest import PASSWORD, sign_in

pytestmark = pytest.mark.browser


def test_sign_in_create_a_key_see_it_once_and_revoke_it(page, acme, server, shot):
    sign_in(page, "owner@acme.test")
    expect(page.get_by_role("heading", level=1)).to_have_text("Acme")
    page.get_by_role("navigation", name="Main").get_by_role("link", name="API keys").click()
    expect(page.get_by_text("No API key yet")).to_be_visible()
    page.get_by_role("link", name="Create your first key").click()
    page.get_by_label("Name").fill("browser key")
    page.get_by_label("Requests per minute").fill("120")
    page.get_by_role("button", name="Create key").click()

    secret = page.get_by_test_id("secret").inner_text().strip()
    assert secret.startswith("sk-tokios-")
    page.locator("[data-copy=secret-value]").click()
    expect(page.locator("[data-copy=secret-value]")).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == secret
    shot(page, "key-created")

    # The key works on /v1 until revoked.
    headers = {"Authorization": f"Bearer {secret}"}
    assert httpx.get(f"{server.url}/v1/models", headers=headers).status_code == 200

    page.get_by_role("link", name="I have copied it — continue").click()  # to the key's page
    expect(page.get_by_role("heading", level=1)).to_have_text("browser key")
    expect(page.locator("#key-status")).to_contain_text("active")
    expect(page.get_by_text("120 requests/min")).to_be_visible()
    assert secret not in page.content()
    page.get_by_role("link", name="← API keys").click()
    row = page.locator("#keys tbody tr", has_text="browser key")
    expect(row).to_contain_text("120 rpm")
    expect(row).to_contain_text("active")
    shot(page, "keys")

    row.get_by_role("link", name=re.compile("Manage")).click()
    page.get_by_role("link", name="Revoke…").click()
    expect(page.get_by_role("heading", level=1)).to_contain_text("Revoke API key")
    shot(page, "key-revoke-confirm")
    page.get_by_role("button", name="Revoke key").click()
    expect(page.locator("#keys tbody tr", has_text="browser key")).to_have_count(0)  # revoked: behind a filter
    page.get_by_label("Status").select_option("all")
    page.get_by_role("button", name="Search").click()
    expect(page.locator("#keys tbody tr", has_text="browser key")).to_contain_text("revoked")
    assert ApiKey.objects.get(name="browser key").revoked_at is not None
    assert httpx.get(f"{server.url}/v1/models", headers=headers).status_code == 401


def test_the_core_flow_works_without_javascript(browser, server, acme):
    context = browser.new_context(base_url=server.url, java_script_enabled=False)
    page = context.new_page()
    try:
        sign_in(page, "owner@acme.test")
        page.goto("/keys/new/")
        page.get_by_label("Name").fill("no-js key")
        page.get_by_role("button", name="Create key").click()
        assert page.get_by_test_id("secret").inner_text().startswith("sk-tokios-")
        expect(page.locator("[data-copy=secret-value]")).to_be_hidden()
    finally:
        context.close()
    assert ApiKey.objects.filter(name="no-js key").exists()


def test_the_usage_page_draws_charts_from_rollups(page, acme, shot):
    from accounts.actions import create_api_key
    from dashboard.tests.usage_data import rollup
    from deployments.actions import create_deployment

    org, _ = acme
    deployment = create_deployment(
        org=org, name="gemma-browser", price_input_micros=100_000, price_output_micros=400_000
    )
    key = create_api_key(org=org, name="backend")[0]
    for days_ago in range(0, 30):
        rollup(
            org,
            days_ago=days_ago,
            key=key,
            deployment=deployment,
            requests=100 + 7 * days_ago,
            errors=days_ago % 4,
            input_tokens=40_000 + 900 * days_ago,
            output_tokens=9_000 + 300 * days_ago,
            cost_micros=7_000 + 300 * days_ago,
        )
    sign_in(page, "owner@acme.test")
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Usage").click()
    charts = page.locator("svg.chart")
    expect(charts).to_have_count(3)
    expect(page.get_by_role("img", name="Requests", exact=True)).to_be_visible()
    assert page.locator("svg.chart .chart-bars rect").count() >= 90
    expect(page.locator("svg.chart title").first).to_have_text("Requests")
    expect(page.locator("#usage-table tfoot")).to_contain_text(f"{sum(100 + 7 * d for d in range(30)):,}")
    shot(page, "usage")

    page.get_by_label("API key", exact=True).select_option(value=str(key.pk))
    page.get_by_label("From", exact=True).fill((date.today() - timedelta(days=6)).isoformat())
    page.get_by_role("button", name="Apply").click()
    expect(page.locator("#usage-table tbody tr")).to_have_count(7)
    with page.expect_download() as download:
        page.get_by_role("link", name="Export CSV").click()
    assert download.value.suggested_filename.startswith(f"tokios-usage-acme-{key.prefix}")


@pytest.mark.e2e
def test_the_deployment_page_shows_a_connector_online_after_it_starts(page, tenant, start_connector, shot):
    tenant.owner.set_password(PASSWORD)
    tenant.owner.save()
    sign_in(page, tenant.owner.email)
    page.goto(f"/deployments/{tenant.deployment.pk}/")
    expect(page.get_by_text("No connector yet — run this command")).to_be_visible()
    expect(page.locator("#connector-command")).to_contain_text("python -m tokios_connector --server http://127.0.0.1:")
    shot(page, "deployment-offline")

    start_connector(tenant.token)
    page.reload()
    row = page.locator("#connectors tbody tr")
    expect(row).to_have_count(1)
    expect(row).to_contain_text("127.0.0.1")
    expect(row).to_contain_text("online")
    expect(page.locator("#status")).to_contain_text("1 connector")
    shot(page, "deployment-online")

    page.goto("/deployments/")
    expect(page.locator("tr", has_text=tenant.deployment.name)).to_contain_text("online")
    page.goto("/")
    expect(page.locator("tr", has_text=tenant.deployment.name)).to_contain_text("online")


def test_screenshots_of_every_main_page(page, context, acme, shot):
    from accounts.actions import add_member, create_api_key
    from accounts.invitations import invite
    from accounts.models import Role, User
    from billing.models import Statement, StatementLine
    from dashboard.tests.usage_data import rollup
    from deployments.actions import create_connector_token, create_deployment

    org, owner = acme
    deployment = create_deployment(
        org=org, name="gemma-tunnel", price_input_micros=100_000, price_output_micros=400_000
    )
    create_connector_token(deployment=deployment, name="gpu-box")
    key = create_api_key(org=org, name="backend", created_by=owner, rpm_limit=600, monthly_budget_micros=50_000_000)[0]
    add_member(org=org, user=User.objects.create_user("member@acme.test"), role=Role.MEMBER)
    invite(org=org, email="invited@acme.test", role="admin", actor=owner)
    rollup(
        org,
        key=key,
        deployment=deployment,
        requests=321,
        errors=4,
        input_tokens=120_000,
        output_tokens=30_000,
        cost_micros=24_000,
    )
    statement = Statement.objects.create(
        org=org,
        month=date(2026, 10, 1),
        requests=9000,
        input_tokens=4_000_000,
        output_tokens=900_000,
        total_micros=760_000,
    )
    StatementLine.objects.create(
        statement=statement,
        deployment=deployment,
        deployment_name="gemma-tunnel",
        requests=9000,
        input_tokens=4_000_000,
        output_tokens=900_000,
        cost_micros=760_000,
    )

    page.goto("/login/")
    shot(page, "login")
    sign_in(page, "owner@acme.test")
    for path, name, heading in [
        ("/", "overview", "Acme"),
        ("/deployments/", "deployments", "Deployments"),
        (f"/deployments/{deployment.pk}/", "deployment-detail", "gemma-tunnel"),
        ("/keys/", "keys-list", "API keys"),
        ("/keys/new/", "key-new", "New API key"),
        ("/usage/", "usage-default", "Usage"),
        ("/statements/", "statements", "Statements"),
        ("/statements/2026-10/", "statement-detail", "Statement for October 2026"),
        ("/members/", "members", "Members"),
        ("/audit/", "audit", "Audit log"),
        ("/profile/", "profile", "Your profile"),
    ]:
        response = page.goto(path)
        assert response.status == 200, path
        expect(page.get_by_role("heading", level=1)).to_contain_text(heading)
        shot(page, name)
    page.goto("/api/docs/")
    expect(page.get_by_role("heading", level=1)).to_have_text("Tokios management API")
    shot(page, "api-docs")

    page.set_viewport_size({"width": 390, "height": 844})
    page.goto("/")
    shot(page, "overview-mobile")


def test_keyboard_users_can_skip_to_the_content(page, acme):
    sign_in(page, "owner@acme.test")
    page.keyboard.press("Tab")
    focused = page.evaluate("document.activeElement.textContent")
    assert focused == "Skip to content"
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.id") == "main"
