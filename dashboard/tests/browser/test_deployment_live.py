"""A deployment's page in Chromium against a real server and real connector processes (the fake model
server is the e2e suite's labelled test double): its connector status changes while the page stays
open when a connector is stopped, killed or started; disabling refuses /v1 requests with 503
`deployment_disabled` while the connector stays connected, enabling serves them again; deleting
closes the live connector for good. Screenshots of each state at 390x844 and 1280x800 go to
test-artifacts/deployment-*.png, and no state scrolls sideways."""

from __future__ import annotations

import time

import httpx
import pytest
from playwright.sync_api import expect

from .conftest import sign_in
from .test_layout import LAPTOP, MEASURE, PHONE

pytestmark = [pytest.mark.browser, pytest.mark.e2e]

LIVE_TIMEOUT = 20_000  # ms: a poll every 5 s, and the server noticing a dead socket


def csp_errors(page) -> list[str]:
    found: list[str] = []
    page.on("console", lambda m: found.append(m.text) if "Content Security Policy" in m.text else None)
    return found


def both_sizes(page, shot, name: str) -> None:
    """A screenshot at each size, and no sideways scroll at either."""
    for size_name, size in (("phone", PHONE), ("laptop", LAPTOP)):
        page.set_viewport_size(size)
        measured = page.evaluate(MEASURE)
        assert measured["scrollWidth"] <= measured["width"], (name, size_name, measured["out"])
        assert measured["bareTables"] == [], (name, measured["bareTables"])
        shot(page, f"deployment-{size_name}-{name}")
    page.set_viewport_size(LAPTOP)


def chat(server, key: str, model: str) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "Hello"}]}
    return httpx.post(
        f"{server.url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=30
    )


def test_status_follows_the_connectors_live_and_disable_refuses_until_enabled(
    page, acme, server, start_connector, shot
):
    from accounts.actions import create_api_key
    from deployments.actions import create_connector_token, create_deployment

    org, owner = acme
    deployment = create_deployment(org=org, name="gemma-live", price_input_micros=100_000, price_output_micros=1)
    _, secret = create_connector_token(deployment=deployment, name="gpu-box-1", created_by=owner)
    _, key = create_api_key(org=org, name="backend", created_by=owner)
    connector = start_connector(secret)
    csp = csp_errors(page)
    sign_in(page, "owner@acme.test")

    page.goto(f"/deployments/{deployment.pk}/")
    status = page.locator("#status")
    history = page.locator("#deployment-history")
    expect(status).to_contain_text("online 1 connector")
    expect(page.locator("#connectors")).to_contain_text("gpu-box-1")  # the token each connector uses
    expect(history).to_contain_text("connected")
    both_sizes(page, shot, "online")

    # Disabled: refused in the caller's shape, the connector stays connected with no traffic.
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Disable", exact=True).click()
    expect(page.locator("#disabled-notice")).to_be_visible()
    expect(status).to_contain_text("disabled 1 connector, no traffic")
    refused = chat(server, key, deployment.name)
    assert refused.status_code == 503, refused.text
    assert refused.json()["error"]["code"] == "deployment_disabled"
    assert refused.headers["x-should-retry"] == "false"
    both_sizes(page, shot, "disabled")

    page.get_by_role("button", name="Enable gemma-live").click()
    expect(page.locator("#disabled-notice")).to_have_count(0)
    served = chat(server, key, deployment.name)
    assert served.status_code == 200, served.text

    # Live: the page is not reloaded, its status follows the connectors.
    page.evaluate("window.stillTheSamePage = true")
    connector.stop()  # SIGTERM: the connector drains and closes with 1001
    expect(status).to_contain_text("offline", timeout=LIVE_TIMEOUT)
    expect(page.locator("#connectors")).to_have_count(0)
    expect(history).to_contain_text("the connector stopped (or went away) (close 1001)", timeout=LIVE_TIMEOUT)
    both_sizes(page, shot, "offline")

    second = start_connector(secret)
    expect(status).to_contain_text("online 1 connector", timeout=LIVE_TIMEOUT)
    second.kill()  # no close frame at all
    expect(status).to_contain_text("offline", timeout=LIVE_TIMEOUT)
    expect(history).to_contain_text("connection lost", timeout=LIVE_TIMEOUT)
    assert page.evaluate("window.stillTheSamePage") is True
    expect(history.locator("dd").first).not_to_have_text("—")  # an uptime figure
    assert csp == []


def test_deleting_asks_for_the_name_then_closes_the_live_connector_for_good(page, acme, server, start_connector, shot):
    from accounts.actions import create_api_key
    from deployments.actions import create_api_key as create_limited_key
    from deployments.actions import create_connector_token, create_deployment

    org, owner = acme
    deployment = create_deployment(org=org, name="gemma-gone", price_input_micros=1, price_output_micros=1)
    _, secret = create_connector_token(deployment=deployment, name="gpu-box-2", created_by=owner)
    create_limited_key(org=org, name="gemma-gone only", created_by=owner, deployments=[deployment])
    _, key = create_api_key(org=org, name="backend", created_by=owner)
    connector = start_connector(secret)
    assert chat(server, key, deployment.name).status_code == 200
    sign_in(page, "owner@acme.test")

    page.goto(f"/deployments/{deployment.pk}/")
    page.get_by_role("link", name="Delete…").click()
    expect(page.get_by_role("heading", level=1)).to_contain_text("Delete gemma-gone?")
    expect(page.get_by_text("1 of them has no other model")).to_be_visible()
    expect(page.get_by_label("Type the deployment's name to confirm")).to_be_focused()
    both_sizes(page, shot, "delete")

    page.get_by_label("Type the deployment's name to confirm").fill("gemma")
    page.get_by_role("button", name="Delete gemma-gone").click()
    expect(page.locator("[data-error-summary]")).to_be_focused()
    both_sizes(page, shot, "delete-invalid")

    page.get_by_label("Type the deployment's name to confirm").fill("gemma-gone")
    page.get_by_role("button", name="Delete gemma-gone").click()
    page.wait_for_url("**/deployments/")
    expect(page.get_by_text("Deployment gemma-gone deleted; its usage history is kept.")).to_be_visible()

    deadline = time.monotonic() + 15
    while connector.popen.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert connector.popen.returncode == 2, connector.output()[-2000:]  # token revoked: it stops
    assert "close 4003" in connector.output()
    gone = chat(server, key, deployment.name)
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "model_not_found"
