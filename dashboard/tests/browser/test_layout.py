"""The dashboard's layout in Chromium at a phone's size (390×844) and a laptop's (1280×800), with the
longest names the columns hold: no page scrolls sideways (tables scroll inside their own focusable
region), a cut name keeps its whole value in its title, the top bar is no taller on a short page
than on a long one; forms focus their first field, and after an invalid submit their error summary;
the 403 and 404 pages are inside the frame. Screenshots of every page at both sizes go to
test-artifacts/layout-*.png."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from .conftest import PASSWORD, sign_in

pytestmark = pytest.mark.browser

PHONE = {"width": 390, "height": 844}
LAPTOP = {"width": 1280, "height": 800}

# The longest values the columns take, with no space to break at.
LONG_KEY_NAME = ("nightly-batch-summariser-" * 4)[:100]
LONG_DEPLOYMENT = ("gemma-3-270m-it-q8-0-" * 4)[:63] + "x"  # 64: the name's maximum
LONG_ORG = ("Acme" + "InternationalResearchHoldings" * 7)[:200]
LONG_EMAIL = "a" * 64 + "@" + ".".join(["b" * 60, "c" * 60, "d" * 59]) + ".example"  # 254: the column's maximum
LONG_TEXT = ("Upstream-model-on-the-gpu-box-behind-the-office-firewall/" * 4)[:200]

# What the page reports: scrolling sideways, what sticks out (outside any scrolling box), tables
# outside a focusable region, cut names without their whole value.
MEASURE = """() => {
  const width = window.innerWidth;
  const scrolls = (e) => { for (let a = e.parentElement; a; a = a.parentElement) {
    if (a === document.body || a === document.documentElement) return false;
    if (getComputedStyle(a).overflowX !== "visible") return true; } return false; };
  const describe = (e) => `${e.tagName.toLowerCase()}.${[...e.classList].join(".")} "${
    (e.textContent || "").trim().slice(0, 40)}" right=${Math.round(e.getBoundingClientRect().right)}`;
  const out = [...document.querySelectorAll("body *")].filter((e) => {
    const r = e.getBoundingClientRect();
    return r.right > width + 1 && !scrolls(e);
  }).slice(0, 5).map(describe);
  const bareTables = [...document.querySelectorAll("main table")].filter((t) => {
    const wrap = t.closest(".table-wrap");
    return !wrap || wrap.getAttribute("tabindex") !== "0" || wrap.getAttribute("role") !== "region"
      || !wrap.getAttribute("aria-label");
  }).map(describe);
  const cutWithoutTitle = [...document.querySelectorAll(".clip")].filter(
    (e) => e.scrollWidth > e.clientWidth + 1 && !(e.title || "").includes((e.textContent || "").trim())
  ).map(describe);
  const bar = document.querySelector(".sidebar");
  return {
    scrollWidth: document.documentElement.scrollWidth, width, out, bareTables, cutWithoutTitle,
    cut: [...document.querySelectorAll(".clip")].filter((e) => e.scrollWidth > e.clientWidth + 1).length,
    barHeight: bar ? Math.round(bar.getBoundingClientRect().height) : 0,
  };
}"""


@dataclass
class Seeded:
    deployment: object
    key: object
    token: object
    membership: object
    endpoint: object
    request_id: str
    invitation_secret: str


def seed(org, owner) -> Seeded:
    """Every page has something to show, named as long as the columns allow."""
    from accounts.actions import create_api_key, create_org, create_personal_access_token
    from accounts.invitations import invite
    from accounts.models import Membership, Role, User
    from alerts.models import ConnectorEvent, WebhookEndpoint
    from alerts.webhooks import new_salt
    from billing.models import Statement, StatementLine
    from dashboard.tests.request_data import request_event
    from dashboard.tests.usage_data import rollup
    from deployments.actions import create_connector_token, create_deployment, grant_model

    org.name = LONG_ORG
    org.save(update_fields=["name"])
    other = create_org(slug="zeta", name=("Zeta" + LONG_ORG)[:200], owner=owner)
    deployment = create_deployment(
        org=org,
        name=LONG_DEPLOYMENT,
        upstream_model=LONG_TEXT,
        price_input_micros=100_000,
        price_output_micros=400_000,
    )
    grant_model(deployment=deployment, org=other)
    grant_model(deployment=create_deployment(org=other, name="zeta-" + LONG_DEPLOYMENT[:59]), org=org)
    token, _ = create_connector_token(deployment=deployment, name=LONG_KEY_NAME, created_by=owner)
    for kind, code in (("connected", None), ("disconnected", 1006)):  # the deployment page's history
        ConnectorEvent.objects.create(
            deployment=deployment, kind=kind, connector_id="conn_0123456789ab", token=token, close_code=code
        )
    key, _ = create_api_key(
        org=org, name=LONG_KEY_NAME, created_by=owner, rpm_limit=600, monthly_budget_micros=50_000_000
    )
    create_api_key(org=org, name="backend", created_by=owner)
    member = User.objects.create_user(LONG_EMAIL, PASSWORD, name=LONG_KEY_NAME)
    # Not add_member(): its audit row's target (200 characters) cannot hold a 254-character e-mail.
    membership = Membership.objects.create(org=org, user=member, role=Role.MEMBER)
    _, invitation_secret = invite(org=org, email="z" * 60 + "@" + "e" * 60 + ".example", role="admin", actor=owner)
    create_personal_access_token(
        user=owner, org=org, name=LONG_KEY_NAME, role=Role.ADMIN, expires_at=timezone.now() + timedelta(days=30)
    )
    endpoint = WebhookEndpoint.objects.create(
        org=org,
        url=f"https://{'h' * 60}.{'i' * 60}.example/{LONG_TEXT}",
        description=LONG_TEXT,
        salt=new_salt(),
        prefix="whsec_abcd",
        created_by=owner,
    )
    for days_ago in range(30):
        rollup(org, days_ago=days_ago, key=key, deployment=deployment, requests=100 + days_ago, cost_micros=9_000)
    event = request_event(org, key=key, deployment=deployment, requested_model=LONG_DEPLOYMENT)
    request_event(org, key=key, deployment=None, requested_model=LONG_TEXT[:100], status_code=404)
    statement = Statement.objects.create(
        org=org, month=date(2026, 10, 1), requests=9000, input_tokens=4_000_000, output_tokens=900_000
    )
    StatementLine.objects.create(
        statement=statement, deployment=deployment, deployment_name=LONG_DEPLOYMENT, requests=9000
    )
    return Seeded(deployment, key, token, membership, endpoint, event.request_id, invitation_secret)


def owner_pages(s: Seeded) -> list[tuple[str, str, int]]:
    d = s.deployment.pk
    return [
        ("overview", "/", 200),
        ("deployments", "/deployments/", 200),
        ("deployment-new", "/deployments/new/", 200),
        ("deployment-detail", f"/deployments/{d}/", 200),
        ("token-revoke", f"/deployments/{d}/tokens/{s.token.pk}/revoke/", 200),
        ("deployment-delete", f"/deployments/{d}/delete/", 200),
        ("playground", "/playground/", 200),
        ("keys", "/keys/", 200),
        ("key-new", "/keys/new/", 200),
        ("key-detail", f"/keys/{s.key.pk}/", 200),
        ("key-edit", f"/keys/{s.key.pk}/edit/", 200),
        ("key-rotate", f"/keys/{s.key.pk}/rotate/", 200),
        ("key-pause", f"/keys/{s.key.pk}/pause/", 200),
        ("key-expiry", f"/keys/{s.key.pk}/expiry/", 200),
        ("key-revoke", f"/keys/{s.key.pk}/revoke/", 200),
        ("keys-all", "/keys/?status=all", 200),
        ("keys-no-match", "/keys/?q=no-such-key&status=revoked", 200),
        ("usage", "/usage/", 200),
        ("usage-invalid", "/usage/?start=2026-12-10&end=2026-12-01", 400),
        ("usage-hourly-narrowed", "/usage/?period=hour", 200),
        ("usage-last-month", "/usage/?range=last-month&top=1", 200),
        ("requests", "/requests/", 200),
        ("request-detail", f"/requests/{s.request_id}/", 200),
        ("statements", "/statements/", 200),
        ("statement-detail", "/statements/2026-10/", 200),
        ("settings", "/settings/", 200),
        ("members", "/members/", 200),
        ("member-remove", f"/members/{s.membership.pk}/remove/", 200),
        ("audit", "/audit/", 200),
        ("alerts", "/alerts/", 200),
        ("webhook-rotate", f"/alerts/webhooks/{s.endpoint.pk}/rotate/", 200),
        ("webhook-delete", f"/alerts/webhooks/{s.endpoint.pk}/delete/", 200),
        ("profile", "/profile/", 200),
        ("password-change", "/password/change/", 200),
        ("password-changed", "/password/change/done/", 200),
        ("audit-search", "/audit/?target=nightly", 200),
        ("api-docs", "/api/docs/", 200),
        ("not-found", "/no-such-page/", 404),
        ("not-found-other-org", f"/deployments/{d + 1000}/", 404),
    ]


def signed_out_pages(s: Seeded) -> list[tuple[str, str, int]]:
    return [
        ("login", "/login/", 200),
        ("password-reset", "/password/reset/", 200),
        ("password-reset-sent", "/password/reset/sent/", 200),
        ("password-reset-bad-link", "/password/reset/MQ/bad-token/", 200),
        ("password-reset-done", "/password/reset/done/", 200),
        ("invitation", f"/invitations/{s.invitation_secret}/", 200),
        ("not-found-signed-out", "/no-such-page/", 404),
    ]


def member_pages() -> list[tuple[str, str, int]]:
    return [
        ("member-overview", "/", 200),
        ("member-playground", "/playground/", 200),
        ("member-usage", "/usage/", 200),
        ("member-requests", "/requests/", 200),
        ("member-forbidden", "/keys/", 403),
        ("member-settings-forbidden", "/settings/", 403),
        ("member-profile", "/profile/", 200),
    ]


def check_pages(page, shot, base: str, pages) -> dict[str, dict]:
    """Visit each page at both sizes; return what was measured, by size and name, and fail on any
    page that scrolls sideways, a table outside a region, or a cut name without its title."""
    measured: dict[str, dict] = {}
    problems: list[str] = []
    csp: list[str] = []
    page.on("console", lambda m: csp.append(m.text) if "Content Security Policy" in m.text else None)
    for size_name, size in (("phone", PHONE), ("laptop", LAPTOP)):
        page.set_viewport_size(size)
        for name, path, status in pages:
            response = page.goto(path)
            assert response is not None and response.status == status, f"{path}: {response and response.status}"
            assert page.url == f"{base}{path}", f"{path} went to {page.url}"  # not sent to sign in
            m = page.evaluate(MEASURE)
            measured[f"{size_name}:{name}"] = m
            if m["scrollWidth"] > m["width"]:
                problems.append(f"{size_name} {path} scrolls sideways ({m['scrollWidth']} > {m['width']}): {m['out']}")
            if m["bareTables"]:
                problems.append(f"{size_name} {path}: table outside a focusable region: {m['bareTables']}")
            if m["cutWithoutTitle"]:
                problems.append(f"{size_name} {path}: cut names without their value: {m['cutWithoutTitle']}")
            shot(page, f"layout-{size_name}-{name}")
    assert problems == [], "\n".join(problems)
    assert csp == [], csp  # the summary's focus and the frames work under the strict policy
    return measured


def test_every_page_fits_a_phone_and_a_laptop_with_the_longest_names(browser, server, acme, shot):
    org, owner = acme
    seeded = seed(org, owner)

    context = browser.new_context(base_url=server.url, viewport=PHONE)
    context.set_default_timeout(10_000)
    page = context.new_page()
    try:
        signed_out = check_pages(page, shot, server.url, signed_out_pages(seeded))
        sign_in(page, "owner@acme.test")
        owned = check_pages(page, shot, server.url, owner_pages(seeded))
    finally:
        context.close()

    # The seeded names were long enough to be cut somewhere (else the test proves nothing about them).
    assert owned["phone:keys"]["cut"] > 0 and owned["phone:members"]["cut"] > 0
    # The top bar is as tall on the shortest page as on a long one: no stretched empty header.
    assert owned["phone:password-changed"]["barHeight"] == owned["phone:audit"]["barHeight"]
    assert owned["phone:password-changed"]["barHeight"] < PHONE["height"] / 2
    assert signed_out["phone:not-found-signed-out"]["barHeight"] < 120


def test_a_member_with_the_longest_email_sees_a_framed_403_and_fitting_pages(browser, server, acme, shot):
    org, owner = acme
    seed(org, owner)
    context = browser.new_context(base_url=server.url, viewport=PHONE)
    context.set_default_timeout(10_000)
    page = context.new_page()
    try:
        sign_in(page, LONG_EMAIL)
        expect(page.get_by_role("navigation", name="Main")).to_be_visible()
        check_pages(page, shot, server.url, member_pages())
        page.set_viewport_size(PHONE)
        page.goto("/keys/")
        expect(page.get_by_role("heading", level=1)).to_have_text("You may not open this page")
        expect(page.get_by_text("Only owners and admins can do this.")).to_be_visible()
        nav = page.get_by_role("navigation", name="Main")
        expect(nav.get_by_role("link", name="Usage")).to_be_visible()
        expect(nav.get_by_role("link", name="API keys")).to_have_count(0)  # a member's navigation
        expect(page.locator(".account .who")).to_have_attribute("title", LONG_EMAIL)
    finally:
        context.close()


def test_the_404_page_is_framed_signed_in_and_out(page, acme, shot):
    page.set_viewport_size(PHONE)
    response = page.goto("/no-such-page/")
    assert response.status == 404
    expect(page.get_by_role("heading", level=1)).to_have_text("Page not found")
    expect(page.get_by_role("main").get_by_role("link", name="Sign in")).to_be_visible()
    expect(page.get_by_role("navigation", name="Main")).to_have_count(0)
    assert "text/html" in response.headers["content-type"]

    sign_in(page, "owner@acme.test")
    response = page.goto("/deployments/999999/")
    assert response.status == 404
    expect(page.get_by_role("heading", level=1)).to_have_text("Page not found")
    nav = page.get_by_role("navigation", name="Main")
    expect(nav.get_by_role("link", name="Deployments")).to_be_visible()
    expect(page.get_by_role("link", name="Go to the overview")).to_be_visible()
    shot(page, "layout-phone-404-signed-in")

    # The management API keeps its JSON.
    response = page.goto("/api/no-such-thing/")
    assert response.status == 404 and response.headers["content-type"].startswith("application/json")


def _focused(page) -> dict:
    return page.evaluate(
        """() => { const e = document.activeElement; const r = e.getBoundingClientRect();
        return { id: e.id, summary: e.hasAttribute("data-error-summary"), text: e.textContent.trim(),
                 visible: r.top >= 0 && r.bottom <= window.innerHeight && r.height > 0 }; }"""
    )


def test_forms_focus_their_first_field_and_then_the_error_summary_on_a_phone(page, acme, server, shot):
    from deployments.actions import create_deployment

    org, owner = acme
    deployment = create_deployment(org=org, name="gemma-focus", price_input_micros=1, price_output_micros=1)
    page.set_viewport_size(PHONE)

    # Sign-in: the e-mail first; a wrong password puts the summary in focus.
    page.goto("/login/")
    assert _focused(page)["id"] == "id_username"
    page.get_by_label("Email").fill("owner@acme.test")
    page.get_by_label("Password").fill("not the password")
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("[data-error-summary]")).to_be_focused()
    focused = _focused(page)
    assert focused["summary"] and focused["visible"], focused
    assert "correct email" in focused["text"]
    shot(page, "layout-phone-login-invalid")
    sign_in(page, "owner@acme.test")

    # A form page: its first field; an empty name sends it back with the summary in focus, in view,
    # and its link leads to the field.
    page.goto("/keys/new/")
    assert _focused(page)["id"] == "id_name"
    page.get_by_label("Requests per minute").fill("0")
    page.get_by_role("button", name="Create key").click()
    expect(page.locator("[data-error-summary]")).to_be_focused()
    focused = _focused(page)
    assert focused["summary"] and focused["visible"], focused
    assert "There are 2 problems" in focused["text"]
    shot(page, "layout-phone-key-new-invalid")
    page.locator("[data-error-summary]").get_by_role("link", name="Name: This field is required.").click()
    expect(page.get_by_label("Name")).to_be_focused()
    page.get_by_label("Name").fill(LONG_KEY_NAME)
    page.get_by_label("Requests per minute").fill("60")
    page.get_by_role("button", name="Create key").click()
    expect(page.get_by_test_id("secret")).to_contain_text("sk-tokios-")
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    shot(page, "layout-phone-key-created")

    page.goto("/deployments/new/")
    assert _focused(page)["id"] == "id_name"
    page.get_by_label("Name").fill("Not A Valid Name!")
    page.get_by_role("button", name="Create deployment").click()
    expect(page.locator("[data-error-summary]")).to_be_focused()
    expect(page.locator("[data-error-summary]")).to_contain_text("Name:")

    # A form far down a page of several: the summary is scrolled into view with the focus.
    page.goto(f"/deployments/{deployment.pk}/")
    assert _focused(page)["id"] in ("", "main")  # a page of several forms takes no field's focus
    page.get_by_label("Share ID").fill("org_nobody_has_this")
    page.get_by_role("button", name="Share").click()
    expect(page.locator("[data-error-summary]")).to_be_focused()
    focused = _focused(page)
    assert focused["summary"] and focused["visible"], focused
    assert page.evaluate("window.scrollY") > 0
    shot(page, "layout-phone-prices-invalid", full_page=False)
