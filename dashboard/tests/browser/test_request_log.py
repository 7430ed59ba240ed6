"""The request log in Chromium, against a real server, connector and model server: the requests a
client really sent appear with their connector (and a 404 with the model it asked for); the
filters, the search by request id and the pages work under the strict CSP; a member sees the
requests of their own keys only, and another key's request is a 404 to them."""

from __future__ import annotations

import time
from datetime import timedelta

import httpx
import pytest
from django.utils import timezone
from playwright.sync_api import expect

from .conftest import PASSWORD, sign_in

pytestmark = [pytest.mark.browser, pytest.mark.e2e]


def wait_for_events(count: int, timeout: float = 15.0) -> None:
    from billing.models import UsageEvent

    deadline = time.monotonic() + timeout
    while UsageEvent.objects.count() < count:
        assert time.monotonic() < deadline, f"{UsageEvent.objects.count()} usage events, expected {count}"
        time.sleep(0.1)


def csp_errors(page) -> list[str]:
    found: list[str] = []
    page.on(
        "console",
        lambda message: found.append(message.text)
        if message.type == "error" and "Content Security Policy" in message.text
        else None,
    )
    return found


def test_the_request_log_filters_searches_pages_and_keeps_members_to_their_own_keys(
    browser, context, page, acme, server, start_connector, shot
):
    from accounts.actions import add_member, create_api_key
    from accounts.models import Role, User
    from billing.models import UsageEvent
    from dashboard.tests.request_data import request_event
    from deployments.actions import create_connector_token, create_deployment

    org, owner = acme
    deployment = create_deployment(org=org, name="gemma-log", price_input_micros=100_000, price_output_micros=400_000)
    _, token = create_connector_token(deployment=deployment, name="gpu-box")
    key, secret = create_api_key(org=org, name="backend", created_by=owner)
    member = User.objects.create_user("member@acme.test", PASSWORD, name="Max Member")
    add_member(org=org, user=member, role=Role.MEMBER)
    members_key, members_secret = create_api_key(org=org, name="max laptop", created_by=member)

    # Two real requests through the server: one the connector serves, one for a model nobody has.
    start_connector(token)
    body = {"model": deployment.name, "messages": [{"role": "user", "content": "Hello"}]}
    served = httpx.post(
        f"{server.url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {secret}"}, timeout=30
    )
    missing = httpx.post(
        f"{server.url}/v1/chat/completions",
        json={**body, "model": "gpt-4o"},
        headers={"Authorization": f"Bearer {members_secret}"},
        timeout=30,
    )
    assert (served.status_code, missing.status_code) == (200, 404), served.text[:300]
    wait_for_events(2)
    served_id, missing_id = served.headers["x-request-id"], missing.headers["x-request-id"]
    connector_id = UsageEvent.objects.get(request_id=served_id).connector_id
    assert connector_id.startswith("conn_")
    # And an hour of older traffic by the owner's key, one request in ten failed.
    start = timezone.now() - timedelta(hours=1)
    for i in range(60):
        failed = {"status_code": 502, "error_code": "upstream_error"} if i % 10 == 0 else {}
        request_event(org, key=key, deployment=deployment, at=start + timedelta(seconds=i), **failed)

    errors = csp_errors(page)
    sign_in(page, "owner@acme.test")
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Requests").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Requests")
    rows = page.locator("#requests tbody tr")
    expect(rows).to_have_count(50)
    expect(rows.first).to_contain_text(missing_id)
    expect(rows.first).to_contain_text("gpt-4o")
    expect(rows.first).to_contain_text("model_not_found")
    expect(rows.nth(1)).to_contain_text(served_id)
    expect(rows.nth(1)).to_contain_text(connector_id)
    expect(rows.nth(1)).to_contain_text("backend")
    expect(page.get_by_text("kept for 90 days")).to_be_visible()
    shot(page, "requests")

    # Pages: older by keyset, and back.
    page.get_by_role("link", name="Older →").click()
    expect(rows).to_have_count(12)
    expect(page.get_by_role("link", name="Older →")).to_have_count(0)
    page.get_by_role("link", name="← Newer").click()
    expect(rows).to_have_count(50)
    expect(rows.first).to_contain_text(missing_id)

    # Filters: errors only, then a key and a status.
    page.get_by_role("link", name="Clear").click()
    page.get_by_label("Errors only").check()
    page.get_by_role("button", name="Apply").click()
    expect(rows).to_have_count(7)  # six 502s and the 404
    page.get_by_label("Errors only").uncheck()
    page.get_by_label("API key").select_option(label=str(members_key))
    page.get_by_role("button", name="Apply").click()
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text(missing_id)
    page.get_by_role("link", name="Clear").click()
    page.get_by_label("Status").fill("502")
    page.get_by_label("Per page").fill("4")
    page.get_by_role("button", name="Apply").click()
    expect(rows).to_have_count(4)
    for i in range(4):
        expect(rows.nth(i)).to_contain_text("upstream_error")
    assert page.goto("/requests/?status=600").status == 400  # past the field's max, which the browser enforces
    expect(page.locator(".errorlist")).to_contain_text("less than or equal to 599")

    # Search by request id (exact), then the request's own page.
    page.get_by_role("link", name="Clear").click()
    page.get_by_label("Request id").fill(served_id)
    page.get_by_role("button", name="Apply").click()
    expect(rows).to_have_count(1)
    rows.first.get_by_role("link", name=served_id).click()
    expect(page.get_by_role("heading", level=1)).to_have_text(f"Request {served_id}")
    expect(page.locator("dl.facts")).to_contain_text(connector_id)
    expect(page.locator("dl.facts")).to_contain_text("gemma-log")
    shot(page, "request-detail")
    assert errors == []

    # A member: their own key's request only; the owner's is nowhere to be found.
    member_page = browser.new_context(base_url=server.url).new_page()
    try:
        sign_in(member_page, "member@acme.test")
        member_page.get_by_role("navigation", name="Main").get_by_role("link", name="Requests").click()
        expect(member_page.get_by_text("made with the API keys you created")).to_be_visible()
        member_rows = member_page.locator("#requests tbody tr")
        expect(member_rows).to_have_count(1)
        expect(member_rows.first).to_contain_text(missing_id)
        member_page.get_by_label("Request id").fill(served_id)
        member_page.get_by_role("button", name="Apply").click()
        expect(member_page.get_by_text("No request here")).to_be_visible()
        assert member_page.goto(f"/requests/{served_id}/").status == 404
        assert member_page.goto(f"/requests/{missing_id}/").status == 200
        shot(member_page, "requests-member")
    finally:
        member_page.context.close()
