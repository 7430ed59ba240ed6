"""A new owner's and a new member's first way in, in Chromium at a phone's size: the set-password link
`manage.py create_org --owner` prints (run as an operator would, against the server's database), and
the invitation link an admin copies from the page after inviting. Screenshots: onboarding-*.png."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from playwright.sync_api import expect

from tests.e2e.conftest import ROOT

from .conftest import sign_in
from .test_layout import PHONE

pytestmark = pytest.mark.browser

LINK = re.compile(r"https?://\S+/password/reset/\S+/\S+/")


def create_org(server, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", "create_org", *args, "--server", server.url],
        cwd=ROOT,
        env=server.env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_create_orgs_set_password_link_lets_the_new_owner_in_once(page, server, transactional_db, shot):
    done = create_org(server, "newco", "--name", "NewCo", "--owner", "founder@newco.test")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "newco"
    link = LINK.search(done.stdout).group(0)
    assert link.startswith(server.url)

    page.set_viewport_size(PHONE)
    page.goto(link)
    page.wait_for_url("**/set-password/")  # the token left the address bar
    expect(page.get_by_role("heading", level=1)).to_have_text("Choose a new password")
    shot(page, "onboarding-phone-set-password")
    page.get_by_label("New password", exact=True).fill("founder's own passphrase")
    page.get_by_label("New password confirmation").fill("founder's own passphrase")
    page.get_by_role("button", name="Set password").click()
    page.wait_for_url("**/password/reset/done/")
    shot(page, "onboarding-phone-password-set")

    sign_in(page, "founder@newco.test", "founder's own passphrase")
    expect(page.get_by_role("heading", level=1)).to_contain_text("NewCo")

    # The link worked once.
    page.context.clear_cookies()
    page.goto(link)
    expect(page.get_by_role("heading", level=1)).to_have_text("This link no longer works")
    shot(page, "onboarding-phone-link-used")


def test_an_invitation_link_copied_from_the_page_lets_the_invitee_join(browser, server, acme, shot):
    admin = browser.new_context(base_url=server.url, viewport=PHONE)
    admin.grant_permissions(["clipboard-read", "clipboard-write"], origin=server.url)
    invitee = browser.new_context(base_url=server.url, viewport=PHONE)
    try:
        page = admin.new_page()
        sign_in(page, "owner@acme.test")
        page.goto("/members/")
        page.get_by_label("Email").fill("nia@acme.test")
        page.get_by_role("button", name="Invite", exact=True).click()
        expect(page.get_by_role("heading", level=1)).to_have_text("Invitation sent")
        expect(page.get_by_text("This is the only time Tokios shows this link.")).to_be_visible()
        shown = page.locator("#invitation-link").inner_text().strip()
        page.get_by_role("button", name="Copy").click()
        copied = page.evaluate("navigator.clipboard.readText()")
        assert copied == shown and "/invitations/inv-tokios-" in copied
        shot(page, "onboarding-phone-invitation-created")
        # Gone from the members page: only the pending invitation's row remains.
        page.get_by_role("link", name="Done — back to members").click()
        expect(page.locator("#invitations")).to_contain_text("nia@acme.test")
        assert copied.rsplit("/", 2)[-2] not in page.content()

        joiner = invitee.new_page()
        joiner.goto(copied)
        joiner.get_by_label("Your name").fill("Nia")
        joiner.get_by_label("Password", exact=True).fill("nia's own passphrase")
        joiner.get_by_label("Password again").fill("nia's own passphrase")
        joiner.get_by_role("button", name="Create account and join").click()
        joiner.wait_for_url(f"{server.url}/")
        expect(joiner.get_by_text("Welcome to Acme.")).to_be_visible()

        # Used: the link now offers sign-in and a password reset.
        invitee.clear_cookies()
        response = joiner.goto(copied)
        assert response.status == 410
        expect(joiner.get_by_role("main").get_by_role("link", name="Sign in")).to_be_visible()
        expect(joiner.get_by_role("link", name="Forgot your password?")).to_be_visible()
        shot(joiner, "onboarding-phone-invitation-used")
    finally:
        admin.close()
        invitee.close()
