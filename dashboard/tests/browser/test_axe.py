"""axe-core on every dashboard page state, in Chromium at a phone's and a laptop's size: no serious
or critical violation (dashboard/tests/browser/axe.py). The pages are test_layout.py's list — every
page, seeded with the longest names — plus the states a GET does not reach: a refused sign-in, a
form's error summary, a new key's secret, a new invitation's link, the set-password page, a used
invitation. Every finding, of any impact, goes to test-artifacts/axe-<test>.json."""

from __future__ import annotations

import json
from dataclasses import dataclass
from urllib.parse import urlsplit

import pytest
from django.utils import timezone

from .axe import blocking, describe, violations
from .conftest import ARTIFACTS, PASSWORD, sign_in
from .test_layout import LAPTOP, LONG_EMAIL, PHONE, Seeded, check_pages, member_pages, owner_pages, seed
from .test_layout import signed_out_pages as layout_signed_out_pages

pytestmark = pytest.mark.browser

SIZES = (("laptop", LAPTOP), ("phone", PHONE))


@dataclass
class Sweep:
    """What axe found, by page state; the blocking ones as lines for the failure message."""

    page: object
    report: dict[str, list[dict]]
    problems: list[str]

    def check(self, where: str) -> None:
        found = violations(self.page)
        self.report[where] = found
        self.problems += describe(where, blocking(found))

    def visit(self, pages, sizes=SIZES) -> None:
        for size_name, size in sizes:
            self.page.set_viewport_size(size)
            for name, path, status in pages:
                response = self.page.goto(path)
                assert response is not None and response.status == status, f"{path}: {response and response.status}"
                landed = urlsplit(self.page.url)  # the page itself, not a sign-in it was sent to
                assert landed.path + (f"?{landed.query}" if landed.query else "") == path, self.page.url
                self.check(f"{size_name}:{name}")

    def at_both_sizes(self, name: str, shot) -> None:
        """The state on screen now, checked and photographed at both sizes (no reload)."""
        for size_name, size in SIZES:
            self.page.set_viewport_size(size)
            self.check(f"{size_name}:{name}")
            shot(self.page, f"axe-{size_name}-{name}")


@pytest.fixture
def sweep(browser, server, request):
    context = browser.new_context(base_url=server.url, viewport=LAPTOP)
    context.set_default_timeout(10_000)
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=server.url)
    state = Sweep(context.new_page(), {}, [])
    yield state
    context.close()
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"axe-{request.node.name.removeprefix('test_')}.json"
    path.write_text(json.dumps(state.report, indent=1, sort_keys=True))


def onboarding_links(org, owner, server_url: str) -> dict[str, str]:
    """A set-password link for an owner made on the command line, and used and expired invitations."""
    from accounts.invitations import invite
    from accounts.models import Invitation, User
    from accounts.onboarding import set_password_link

    newcomer = User.objects.create_user("newcomer@acme.test")
    _, revoked = invite(org=org, email="revoked@acme.test", role="member", actor=owner)
    _, expired = invite(org=org, email="late@acme.test", role="member", actor=owner)
    Invitation.objects.filter(email="revoked@acme.test").update(revoked_at=timezone.now())
    Invitation.objects.filter(email="late@acme.test").update(expires_at=timezone.now())
    return {
        "set-password": set_password_link(user=newcomer, server=server_url).removeprefix(server_url),
        "invitation-revoked": f"/invitations/{revoked}/",
        "invitation-expired": f"/invitations/{expired}/",
    }


def test_signed_out_pages_have_no_serious_or_critical_violation(sweep, server, acme, shot):
    org, owner = acme
    seeded: Seeded = seed(org, owner)
    links = onboarding_links(org, owner, server.url)
    page = sweep.page

    sweep.visit(layout_signed_out_pages(seeded))
    used = [(name, links[name], 410) for name in ("invitation-revoked", "invitation-expired")]
    sweep.visit(used)
    check_pages(page, shot, server.url, used)  # fits a phone; screenshots as layout-*

    # The set-password page a create_org link opens (Django moves the token out of the address).
    page.goto(links["set-password"])
    page.wait_for_url("**/set-password/")
    sweep.at_both_sizes("set-password", shot)

    # A refused sign-in: the error summary in focus.
    page.goto("/login/")
    page.get_by_label("Email").fill("owner@acme.test")
    page.get_by_label("Password").fill("not the password")
    page.get_by_role("button", name="Sign in").click()
    page.locator("[data-error-summary]").wait_for()
    sweep.at_both_sizes("login-invalid", shot)

    assert sweep.problems == [], "\n".join(sweep.problems)


def test_an_owners_pages_have_no_serious_or_critical_violation(sweep, server, acme, shot):
    org, owner = acme
    seeded = seed(org, owner)
    page = sweep.page
    sign_in(page, "owner@acme.test")

    sweep.visit(owner_pages(seeded))

    # A form sent back with its error summary.
    page.set_viewport_size(LAPTOP)
    page.goto("/keys/new/")
    page.get_by_role("button", name="Create key").click()
    page.locator("[data-error-summary]").wait_for()
    sweep.at_both_sizes("key-new-invalid", shot)

    # A new key's secret, shown once.
    page.goto("/keys/new/")
    page.get_by_label("Name").fill("axe-check")
    page.get_by_role("button", name="Create key").click()
    page.get_by_test_id("secret").wait_for()
    sweep.at_both_sizes("key-created", shot)

    # A new invitation's link, shown once.
    page.goto("/members/")
    page.get_by_label("Email").fill("invitee@acme.test")
    page.get_by_role("button", name="Invite", exact=True).click()
    page.locator("#invitation-link").wait_for()
    sweep.at_both_sizes("invitation-created", shot)
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]

    assert sweep.problems == [], "\n".join(sweep.problems)


def test_a_members_pages_have_no_serious_or_critical_violation(sweep, server, acme):
    org, owner = acme
    seed(org, owner)
    sign_in(sweep.page, LONG_EMAIL, PASSWORD)
    sweep.visit(member_pages())
    assert sweep.problems == [], "\n".join(sweep.problems)


def test_the_check_finds_what_it_should(page):
    # A control without a name and text without contrast: axe must call both blocking, else the
    # sweeps above would pass for the wrong reason.
    page.set_content(
        '<html lang="en"><head><title>t</title></head><body><main><button></button>'
        '<p><span style="color:#eee;background:#fff">faint</span></p></main></body></html>'
    )
    found = {v["id"]: v["impact"] for v in blocking(violations(page))}
    assert found == {"button-name": "critical", "color-contrast": "serious"}
