"""Keys as an admin manages them, in Chromium against a real server: reloading the "key created"
page makes no second key; rotating with a grace period keeps the old secret working at the gateway
until the grace ends; a paused key gets 401 key_paused at the gateway until it is resumed.
Screenshots of every state at 390x844 and 1280x800 go to test-artifacts/."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest
from playwright.sync_api import expect

from .conftest import sign_in

pytestmark = pytest.mark.browser

PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 800}


def both_sizes(page, shot, name: str) -> None:
    """A screenshot at each size; neither may scroll sideways."""
    for size, label in ((PHONE, "phone"), (DESKTOP, "desktop")):
        page.set_viewport_size(size)
        assert page.evaluate("document.documentElement.scrollWidth") <= size["width"], (name, label)
        shot(page, f"keys-{label}-{name}")
    page.set_viewport_size(DESKTOP)


def models_call(server, secret: str) -> tuple[int, dict, dict]:
    """GET /v1/models with `secret`: (status, headers, body)."""
    request = urllib.request.Request(f"{server.url}/v1/models", headers={"Authorization": f"Bearer {secret}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), json.loads(exc.read())


def test_reloading_the_key_created_page_makes_no_second_key(page, acme, server, shot):
    from accounts.models import ApiKey

    org, _ = acme
    sign_in(page, "owner@acme.test")
    page.goto("/keys/new/")
    page.get_by_label("Name").fill("mobile app")
    page.get_by_role("button", name="Create key").click()
    secret = page.get_by_test_id("secret").inner_text()
    assert secret.startswith("sk-tokios-")
    both_sizes(page, shot, "created")

    page.reload()  # the browser sends the same form again
    expect(page.get_by_test_id("already-created")).to_contain_text("mobile app")
    assert secret not in page.content()
    both_sizes(page, shot, "already-created")
    assert ApiKey.objects.filter(org=org).count() == 1

    page.reload()  # and again
    expect(page.get_by_test_id("already-created")).to_be_visible()
    assert ApiKey.objects.filter(org=org).count() == 1
    page.get_by_role("link", name="Go to the key").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("mobile app")
    page.goto("/keys/")
    expect(page.locator("tr[data-key]")).to_have_count(1)


def test_rotate_with_a_grace_period_then_pause_and_resume(page, acme, server, shot):
    from accounts.models import ApiKey
    from deployments.actions import create_api_key, create_deployment

    org, owner = acme
    create_deployment(org=org, name="gemma-keys")
    key, old = create_api_key(org=org, name="backend", created_by=owner, monthly_budget_micros=5_000_000)
    assert models_call(server, old)[0] == 200
    sign_in(page, "owner@acme.test")

    page.goto("/keys/")
    expect(page.locator(f'tr[data-key="{key.prefix}"]')).to_contain_text("active")
    both_sizes(page, shot, "list")
    page.get_by_role("link", name="backend", exact=True).click()
    expect(page.get_by_test_id("budget-percent")).to_have_text("0%")
    both_sizes(page, shot, "detail")

    # Rotate, keeping the old secret for an hour.
    page.get_by_role("link", name="Rotate secret…").click()
    page.get_by_label("Keep the old secret working for").select_option(label="1 hour")
    both_sizes(page, shot, "rotate-form")
    page.get_by_role("button", name="Rotate secret").click()
    new = page.get_by_test_id("secret").inner_text()
    assert new.startswith("sk-tokios-") and new != old
    expect(page.locator("#rotation-grace")).to_contain_text("keeps working until")
    both_sizes(page, shot, "rotated")
    page.reload()  # no second rotation
    expect(page.get_by_test_id("already-created")).to_be_visible()
    assert ApiKey.objects.get(pk=key.pk).key_hash != key.key_hash and models_call(server, new)[0] == 200

    # At the gateway: both secrets during the grace, only the new one once it ends.
    assert models_call(server, old)[0] == 200 and models_call(server, new)[0] == 200
    page.goto(f"/keys/{key.pk}/")
    expect(page.locator("#grace-notice")).to_contain_text(key.prefix)
    both_sizes(page, shot, "detail-in-grace")
    page.get_by_role("button", name="Refuse it now").click()
    expect(page.get_by_role("status").filter(has_text="refused from now on")).to_be_visible()
    status, headers, body = models_call(server, old)
    assert (status, body["error"]["code"]) == (401, "invalid_api_key") and "rotated" in body["error"]["message"]
    assert models_call(server, new)[0] == 200

    # Pause: confirm, then the gateway refuses the key with key_paused until it is resumed.
    page.get_by_role("link", name="Pause…").click()
    both_sizes(page, shot, "pause-confirm")
    page.get_by_role("button", name="Pause key").click()
    expect(page.locator("#paused-notice")).to_contain_text("key_paused")
    both_sizes(page, shot, "paused")
    status, headers, body = models_call(server, new)
    assert (status, body["error"]["code"]) == (401, "key_paused")
    assert {name.lower(): value for name, value in headers.items()}["x-should-retry"] == "false"
    page.goto("/keys/")
    expect(page.locator(f'tr[data-key="{ApiKey.objects.get(pk=key.pk).prefix}"]')).to_contain_text("paused")
    page.goto(f"/keys/{key.pk}/")
    page.get_by_role("button", name="Resume key").click()
    expect(page.locator("#paused-notice")).to_have_count(0)
    assert models_call(server, new)[0] == 200
