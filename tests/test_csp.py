"""The Content-Security-Policy header (tokios_site/csp.py) on the pages Django renders, and templates
that keep to it. The browser's own verdict is dashboard/tests/browser/test_csp.py."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from django.http import HttpResponse
from django.test import Client, RequestFactory

from dashboard.charts import Series, bar_chart
from tokios_site.csp import HEADER, content_security_policy, policy_header

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE_DIRS = [ROOT / "templates", *ROOT.glob("*/templates")]

pytestmark = pytest.mark.django_db


def directives(header: str) -> dict[str, list[str]]:
    return {name: sources for name, *sources in (part.split() for part in header.split(";"))}


@pytest.mark.parametrize("path", ["/login/", "/password/reset/", "/admin/login/", "/no-such-page/"])
def test_every_page_carries_a_policy_without_inline_script_or_style(client: Client, path: str) -> None:
    response = client.get(path)
    policy = directives(response[HEADER])
    assert policy["script-src"] == ["'self'"] and policy["style-src"] == ["'self'"]
    assert policy["object-src"] == ["'none'"] and policy["frame-ancestors"] == ["'none'"]
    assert policy["base-uri"] == ["'none'"] and policy["form-action"] == ["'self'"]
    assert "'unsafe-inline'" not in response[HEADER] and "'unsafe-eval'" not in response[HEADER]


def test_the_signed_in_dashboard_and_the_api_carry_it(client: Client, owner, org) -> None:
    client.force_login(owner)
    for path in ["/", "/usage/", "/api/", "/api/docs/", "/api/docs/?script="]:
        response = client.get(path)
        assert response.status_code == 200, path
        assert "script-src 'self'" in response[HEADER], path


def test_a_refused_form_post_carries_it_too() -> None:
    # The CSRF failure page is answered by middleware inside this one.
    response = Client(enforce_csrf_checks=True).post("/login/", {"username": "x", "password": "y"})
    assert response.status_code == 403
    assert "script-src 'self'" in response[HEADER]


def test_a_path_prefix_may_have_its_own_policy_and_a_view_its_own_header(settings) -> None:
    settings.CONTENT_SECURITY_POLICY_PATHS = {"/relaxed/": {"default-src": ["'self'"], "style-src": ["'self'", "x"]}}
    middleware = content_security_policy(lambda request: HttpResponse())
    factory = RequestFactory()
    assert middleware(factory.get("/relaxed/page"))[HEADER] == "default-src 'self'; style-src 'self' x"
    assert "script-src 'self'" in middleware(factory.get("/other/"))[HEADER]
    own = content_security_policy(lambda request: HttpResponse(headers={HEADER: "default-src 'none'"}))
    assert own(factory.get("/"))[HEADER] == "default-src 'none'"


def test_a_directive_without_sources_is_written_alone() -> None:
    assert policy_header({"default-src": ["'self'"], "upgrade-insecure-requests": []}) == (
        "default-src 'self'; upgrade-insecure-requests"
    )


INLINE = [
    (re.compile(r"\sstyle\s*=", re.I), "a style= attribute"),
    (re.compile(r"<style[\s>]", re.I), "a <style> element"),
    (re.compile(r"<script(?![^>]*\bsrc=)(?![^>]*type=\"application/json\")[^>]*>", re.I), "an inline <script>"),
    (re.compile(r"\son[a-z]+\s*=", re.I), "an on…= event handler"),
    (re.compile(r"javascript:", re.I), "a javascript: URL"),
]


@pytest.mark.parametrize(
    "template", sorted(p for d in TEMPLATE_DIRS for p in d.rglob("*.html")), ids=lambda p: str(p.relative_to(ROOT))
)
def test_no_template_needs_inline_script_or_style(template: Path) -> None:
    text = template.read_text()
    text = re.sub(r"{% comment %}.*?{% endcomment %}", "", text, flags=re.S)
    found = [what for pattern, what in INLINE if pattern.search(text)]
    assert found == [], f"{template.name} has {', '.join(found)}: the Content-Security-Policy refuses it"


def test_the_usage_charts_need_no_inline_style_or_script() -> None:
    chart = bar_chart(
        ["2026-12-01", "2026-12-02"],
        [Series("Requests", [3, 5]), Series("Errors", [1, 0], color="#b91c1c")],
        title="Requests <by day>",
    )
    found = [what for pattern, what in INLINE if pattern.search(chart)]
    assert found == [] and "<svg" in chart
