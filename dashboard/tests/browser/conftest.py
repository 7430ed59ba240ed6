"""Headless Chromium (Debian's `chromium`) driven by Playwright against a real uvicorn server.

The server, fake upstream and connector fixtures are the end-to-end ones (tests/e2e/conftest.py).
Screenshots go to test-artifacts/ (gitignored).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.e2e.conftest import _db_env, fake_upstream, server, start_connector, tenant  # noqa: F401

# Playwright's sync API runs an event loop in this thread; the test's own ORM calls are still
# plain synchronous code, which Django would otherwise refuse next to a running loop.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

CHROMIUM = os.environ.get("TOKIOS_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[3] / "test-artifacts"
PASSWORD = "browser-test-passphrase"


@pytest.fixture
def browser():
    # Per test, not per session: while Playwright's sync API is alive its event loop runs in this
    # thread, and any later test calling asyncio.run() (pytest may order other apps' tests in
    # between) would fail with "cannot be called from a running event loop".
    if not shutil.which(CHROMIUM):
        message = f"needs Chromium at {CHROMIUM} (apt-get install chromium)"
        if os.environ.get("CI", "").lower() == "true" or os.environ.get("TOKIOS_REQUIRE_BROWSER") == "1":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        yield chromium
        chromium.close()


@pytest.fixture
def context(browser, server):  # noqa: F811  (the imported fixture, requested by name)
    context = browser.new_context(base_url=server.url, viewport={"width": 1280, "height": 900})
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=server.url)
    context.set_default_timeout(10_000)
    yield context
    context.close()


@pytest.fixture
def page(context):
    return context.new_page()


@pytest.fixture
def shot():
    ARTIFACTS.mkdir(exist_ok=True)

    def save(page, name: str, full_page: bool = True) -> Path:
        path = ARTIFACTS / f"{name}.png"
        page.screenshot(path=str(path), full_page=full_page)
        return path

    return save


def sign_in(page, email: str, password: str = PASSWORD) -> None:
    page.goto("/login/")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url("**/")


@pytest.fixture
def acme(transactional_db):
    """An org with an owner who signs in with a real password (committed for the server process)."""
    from accounts.actions import create_org
    from accounts.models import User

    owner = User.objects.create_user("owner@acme.test", PASSWORD, name="Olive Owner")
    org = create_org(slug="acme", name="Acme", owner=owner)
    return org, owner
