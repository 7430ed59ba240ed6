"""The Content-Security-Policy in a real browser: every main page works under it and Chromium reports
no violation (an inline script, an inline style, an eval, a foreign source) on any of them.

Violations are caught twice: the `securitypolicyviolation` events the page fires (recorded by an
init script, which Playwright injects outside the page's policy) and Chromium's console errors."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from .conftest import PASSWORD, sign_in

pytestmark = pytest.mark.browser

RECORD_VIOLATIONS = """
window.__csp = [];
document.addEventListener("securitypolicyviolation", (e) => {
  window.__csp.push(`${e.violatedDirective} blocked ${e.blockedURI || "inline"} at ${e.sourceFile}:${e.lineNumber}`);
});
"""


class Violations:
    def __init__(self, page):
        self.page = page
        self.console: list[str] = []
        page.add_init_script(RECORD_VIOLATIONS)
        page.on("console", self._on_console)

    def _on_console(self, message) -> None:
        if message.type == "error" and "Content Security Policy" in message.text:
            self.console.append(message.text)

    def visit(self, path: str, heading: str | re.Pattern[str] | None = None) -> list[str]:
        response = self.page.goto(path)
        assert response is not None and response.status == 200, path
        assert "script-src 'self'" in response.headers["content-security-policy"], path
        if heading is not None:
            expect(self.page.get_by_role("heading", level=1).first).to_contain_text(heading)
        self.page.wait_for_load_state("networkidle")
        return self.found(path)

    def found(self, where: str) -> list[str]:
        events = self.page.evaluate("window.__csp || []")
        found = [f"{where}: {v}" for v in [*events, *self.console]]
        self.console.clear()
        return found


@pytest.fixture
def staff(transactional_db):
    from accounts.models import User

    return User.objects.create_superuser("root@tokios.test", PASSWORD)


def test_the_browser_reports_no_csp_violation_on_the_main_pages(page, acme, staff, shot):
    from accounts.actions import create_api_key
    from accounts.invitations import invite
    from dashboard.tests.usage_data import rollup
    from deployments.actions import create_connector_token, create_deployment

    org, owner = acme
    deployment = create_deployment(org=org, name="gemma-csp", price_input_micros=100_000, price_output_micros=400_000)
    create_connector_token(deployment=deployment, name="gpu-box")
    key = create_api_key(org=org, name="backend", created_by=owner)[0]
    for days_ago in range(7):
        rollup(org, days_ago=days_ago, key=key, deployment=deployment, requests=10 + days_ago, cost_micros=900)
    _, invitation_secret = invite(org=org, email="new@acme.test", role="member", actor=owner)

    seen = Violations(page)
    violations: list[str] = []
    # Signed out: the sign-in and password pages, an invitation.
    violations += seen.visit("/login/", "Sign in")
    violations += seen.visit("/password/reset/")
    violations += seen.visit(f"/invitations/{invitation_secret}/")
    sign_in(page, "owner@acme.test")
    for path, heading in [
        ("/", "Acme"),
        ("/deployments/", "Deployments"),
        (f"/deployments/{deployment.pk}/", "gemma-csp"),
        ("/keys/", "API keys"),
        ("/keys/new/", "New API key"),
        ("/usage/", "Usage"),
        ("/statements/", "Statements"),
        ("/members/", "Members"),
        ("/audit/", "Audit log"),
        ("/profile/", "Your profile"),
    ]:
        violations += seen.visit(path, heading)
    page.goto("/usage/")
    expect(page.locator("svg.chart .chart-bars rect").first).to_be_visible()
    violations += seen.found("/usage/ charts")

    # The management API: its browsable pages and its reference.
    violations += seen.visit("/api/")
    violations += seen.visit("/api/orgs/acme/keys/")
    violations += seen.visit("/api/docs/", "Tokios management API")
    shot(page, "csp-api-docs")

    # The Django admin, as an operator: sign-in, index, a list and a form (its widgets' scripts).
    page.context.clear_cookies()
    violations += seen.visit("/admin/login/")
    page.get_by_label("Email").fill("root@tokios.test")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name=re.compile("Log in")).click()
    page.wait_for_url("**/admin/")
    violations += seen.found("/admin/ after sign-in")
    violations += seen.visit("/admin/")
    violations += seen.visit("/admin/accounts/apikey/")
    violations += seen.visit(f"/admin/accounts/apikey/{key.pk}/change/")
    violations += seen.visit("/admin/deployments/deployment/add/")
    shot(page, "csp-admin-form")

    assert violations == [], "\n".join(violations)


def test_an_injected_inline_script_does_not_run(page, acme, server):
    """The policy is not just present but enforced: a page that carried an inline script (as an
    HTML injection would) gets it refused."""
    seen = Violations(page)
    seen.visit("/login/")
    ran = page.evaluate(
        """() => {
        window.__ran = false;
        const s = document.createElement("script");
        s.textContent = "window.__ran = true";
        document.body.appendChild(s);
        return window.__ran;
    }"""
    )
    assert ran is False
    assert any("script-src" in v for v in seen.found("/login/"))
