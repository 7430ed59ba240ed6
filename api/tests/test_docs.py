"""The API reference at /api/docs/: a server-rendered page made from the schema, for signed-in users
(or everyone with TOKIOS_API_DOCS_PUBLIC), compressed; the schema for sessions and tokens."""

from __future__ import annotations

import gzip
import re

import pytest
from django.test import Client

from accounts.actions import create_personal_access_token
from accounts.models import Role

pytestmark = pytest.mark.django_db


def test_signed_out_visitors_are_sent_to_sign_in(client):
    response = client.get("/api/docs/")
    assert response.status_code == 302 and response["Location"] == "/login/?next=/api/docs/"


def test_a_signed_in_user_reads_every_endpoint_with_its_fields(as_member):
    response = as_member.get("/api/docs/")
    assert response.status_code == 200
    page = response.text
    for method, path in [
        ("GET", "/api/orgs/"),
        ("POST", "/api/orgs/{org}/keys/"),
        ("POST", "/api/orgs/{org}/keys/{id}/revoke/"),
        ("DELETE", "/api/orgs/{org}/invitations/{id}/"),
        ("GET", "/api/orgs/{org}/usage/"),
    ]:
        assert re.search(
            rf'<span class="method method-{method.lower()}">{method}</span> <code>{re.escape(path)}</code>', page
        )
    # A body's fields with their bounds, and the answer linked to its object.
    assert "<code>monthly_budget_micros</code>" in page and "0 to 1,000,000,000,000,000" in page
    assert 'href="#schema-ApiKeyCreated"' in page and 'id="schema-ApiKeyCreated"' in page
    # Backticks in the schema's text become code, and nothing is left unescaped.
    assert "<code>Authorization: Bearer pat-tokios-…</code>" in page
    assert "<script" not in page.split("</head>", 1)[1]


def test_every_internal_link_has_its_target(as_member):
    page = as_member.get("/api/docs/").text
    ids = set(re.findall(r'\sid="([^"]+)"', page))
    targets = set(re.findall(r'href="#([^"]+)"', page))
    assert targets and targets <= ids, targets - ids
    assert len(ids) == len(re.findall(r'\sid="([^"]+)"', page))  # no duplicate id


def test_it_loads_nothing_from_elsewhere(as_member):
    page = as_member.get("/api/docs/").text
    assets = re.findall(r'(?:src|href)\s*=\s*["\']([^"\']+)["\']', page)
    assert assets and not [a for a in assets if a.startswith(("http:", "https:", "//"))]


def test_it_is_compressed_for_clients_that_accept_it(as_member):
    plain = as_member.get("/api/docs/")
    packed = as_member.get("/api/docs/", HTTP_ACCEPT_ENCODING="gzip")
    assert packed["Content-Encoding"] == "gzip" and "Accept-Encoding" in packed["Vary"]
    unmasked = re.compile(rb'name="csrfmiddlewaretoken" value="[^"]+"')  # masked afresh per answer
    assert unmasked.sub(b"", gzip.decompress(packed.content)) == unmasked.sub(b"", plain.content)
    assert len(packed.content) < 40_000 < len(plain.content)


def test_the_schema_answers_a_token_compressed(org, owner):
    _, secret = create_personal_access_token(user=owner, org=org, role=Role.MEMBER, name="docs")
    response = Client().get(
        "/api/schema/?format=json", HTTP_AUTHORIZATION=f"Bearer {secret}", HTTP_ACCEPT_ENCODING="gzip"
    )
    assert response.status_code == 200 and response["Content-Encoding"] == "gzip"
    body = gzip.decompress(response.content).decode()
    assert '"/api/orgs/{org}/keys/"' in body


def test_a_bad_token_gets_401_from_the_schema(db):
    response = Client().get("/api/schema/", HTTP_AUTHORIZATION="Bearer pat-tokios-nope")
    assert response.status_code == 401


def test_the_setting_makes_both_public(client, settings):
    settings.API_DOCS_PUBLIC = True
    assert client.get("/api/docs/").status_code == 200
    assert client.get("/api/schema/").status_code == 200
    assert client.get("/api/orgs/").status_code == 401  # the API itself is not


def test_a_post_is_refused(as_member):
    assert as_member.post("/api/docs/").status_code == 405
