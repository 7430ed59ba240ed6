"""The playground in Chromium against a real server, a real connector and the fake model server (the
e2e suite's labelled test double): a member types a message and sees the reply appear while it
streams, with its usage and request id; the request is metered against their playground key; Stop
ends a reply early; a secret replaced elsewhere is renewed once, by itself; a stopped connector is
explained in words. Screenshots at 390x844 and 1280x800 go to test-artifacts/playground-*.png."""

from __future__ import annotations

import time

import pytest
from playwright.sync_api import expect

from .axe import blocking, describe, violations
from .conftest import PASSWORD, sign_in
from .test_deployment_live import csp_errors
from .test_layout import LAPTOP, MEASURE, PHONE

pytestmark = [pytest.mark.browser, pytest.mark.e2e]


def both_sizes(page, shot, name: str) -> None:
    """At each size: no sideways scroll, no serious or critical axe finding, a screenshot."""
    for size_name, size in (("phone", PHONE), ("laptop", LAPTOP)):
        page.set_viewport_size(size)
        measured = page.evaluate(MEASURE)
        assert measured["scrollWidth"] <= measured["width"], (name, size_name, measured["out"])
        assert describe(f"{size_name}:{name}", blocking(violations(page))) == []
        shot(page, f"playground-{size_name}-{name}")
    page.set_viewport_size(LAPTOP)


def usage_event(request_id: str, timeout: float = 15.0):
    from billing.models import UsageEvent

    deadline = time.monotonic() + timeout
    while True:
        event = UsageEvent.objects.select_related("api_key").filter(request_id=request_id).first()
        if event is not None:
            return event
        assert time.monotonic() < deadline, f"no usage event for {request_id}"
        time.sleep(0.1)


def test_a_member_streams_a_reply_through_a_real_connector_and_it_is_metered(page, acme, server, start_connector, shot):
    from accounts.actions import add_member
    from accounts.models import ApiKey, Role, User
    from deployments.actions import create_connector_token, create_deployment

    org, owner = acme
    deployment = create_deployment(org=org, name="gemma-play", price_input_micros=1_000_000, price_output_micros=1)
    _, token = create_connector_token(deployment=deployment, name="gpu-box")
    connector = start_connector(token)
    member = User.objects.create_user("member@acme.test", PASSWORD, name="Max Member")
    add_member(org=org, user=member, role=Role.MEMBER)
    csp = csp_errors(page)
    sign_in(page, "member@acme.test")

    page.get_by_role("navigation", name="Main").get_by_role("link", name="Playground").click()
    page.wait_for_url("**/playground/")
    expect(page.get_by_role("heading", level=1)).to_have_text("Playground")
    expect(page.locator("#snippet-openai")).to_contain_text('model="gemma-play"')
    expect(page.locator("#snippet-curl")).to_contain_text(f"curl {server.url}/v1/chat/completions")
    expect(page.get_by_label("Message")).to_be_focused()
    both_sizes(page, shot, "start")

    # A slow reply (the fake's directive: 20 words, 150 ms apart) is seen while it streams.
    page.get_by_label("Message").fill("Tell me about the sea [[words=20 delay_ms=150]]")
    page.get_by_role("button", name="Send").click()
    reply = page.locator(".turn-assistant .turn-text").last
    expect(reply).to_contain_text("w1")
    expect(page.get_by_role("button", name="Stop")).to_be_enabled()
    partial = reply.text_content()
    assert "w19" not in partial, partial  # still streaming: the text appeared piece by piece
    expect(page.get_by_role("status")).to_have_text("Reply complete.", timeout=15_000)
    expect(reply).to_contain_text("w19")
    expect(page.locator("#pg-result-tokens")).to_have_text("7 in, 20 out")
    expect(page.locator("#pg-result-finish")).to_have_text("stop")
    request_id = page.locator("#pg-result-request a").text_content()
    assert request_id
    both_sizes(page, shot, "streamed")

    # Metered like any request: against the member's playground key, which the page never showed.
    key = ApiKey.objects.get(playground=True)
    assert (key.org, key.created_by) == (org, member)
    event = usage_event(request_id)
    assert event.api_key == key and event.status_code == 200
    assert (event.input_tokens, event.output_tokens) == (7, 20)
    assert event.cost_micros > 0
    stored = page.evaluate(f"sessionStorage.getItem('tokios-playground-key:{org.pk}')")
    assert stored.startswith("sk-tokios-") and stored not in page.content()

    # The request id leads to the request's page (the member's own key's requests are theirs to see).
    page.locator("#pg-result-request a").click()
    page.wait_for_url(f"**/requests/{request_id}/")
    page.go_back()
    page.wait_for_url("**/playground/")

    # Stop: the reply ends where it was.
    page.get_by_label("Message").fill("A long one [[words=200 delay_ms=100]]")
    page.get_by_role("button", name="Send").click()
    reply = page.locator(".turn-assistant .turn-text").last
    expect(reply).to_contain_text("w2")
    page.get_by_role("button", name="Stop").click()
    expect(page.get_by_role("status")).to_have_text("Stopped.")
    expect(page.get_by_role("button", name="Send")).to_be_enabled()
    assert "w199" not in reply.text_content()

    # A secret replaced elsewhere (another tab asked): a 401, a new secret once, and the reply.
    page.evaluate(f"sessionStorage.setItem('tokios-playground-key:{org.pk}', 'sk-tokios-replaced-elsewhere')")
    page.get_by_role("button", name="New chat").click()
    expect(page.locator(".turn")).to_have_count(0)
    page.get_by_label("Message").fill("Hello again [[text=<b>not_bold</b>_w7]]")
    page.get_by_role("button", name="Send").click()
    expect(page.get_by_role("status")).to_have_text("Reply complete.", timeout=15_000)
    expect(page.locator(".turn-assistant .turn-text").last).to_contain_text("<b>not bold</b> w7")  # text, not HTML
    expect(page.locator(".turn b")).to_have_count(0)
    renewed = page.evaluate(f"sessionStorage.getItem('tokios-playground-key:{org.pk}')")
    assert renewed not in (stored, "sk-tokios-replaced-elsewhere")
    assert ApiKey.objects.filter(playground=True).count() == 1

    # No connector: said in words; the message stays to send again.
    connector.stop()
    page.get_by_label("Message").fill("Anyone there?")
    page.get_by_role("button", name="Send").click()
    error = page.get_by_role("alert")
    expect(error).to_contain_text("The model is not reachable: no connector is online for it")
    expect(page.get_by_label("Message")).to_have_value("Anyone there?")
    both_sizes(page, shot, "offline")
    assert csp == []
