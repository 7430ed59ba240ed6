from __future__ import annotations

import pytest

pytestmark = pytest.mark.django_db


def test_the_openapi_schema_describes_every_endpoint_and_pat_auth(client, owner):
    client.force_login(owner)
    response = client.get("/api/schema/", HTTP_ACCEPT="application/json")
    assert response.status_code == 200
    schema = response.json()
    paths = schema["paths"]
    for path in (
        "/api/orgs/",
        "/api/orgs/{org}/keys/",
        "/api/orgs/{org}/keys/{id}/revoke/",
        "/api/orgs/{org}/deployments/",
        "/api/orgs/{org}/deployments/{deployment_pk}/tokens/",
        "/api/orgs/{org}/deployments/{deployment_pk}/grants/",
        "/api/orgs/{org}/members/",
        "/api/orgs/{org}/usage/",
        "/api/orgs/{org}/statements/{month}/",
    ):
        assert path in paths, path
    assert schema["components"]["securitySchemes"]["personalAccessToken"]["scheme"] == "bearer"
    created = schema["paths"]["/api/orgs/{org}/keys/"]["post"]["responses"]["201"]["content"]["application/json"][
        "schema"
    ]
    assert created["$ref"].endswith("/ApiKeyCreated")


def test_the_schema_like_the_api_needs_a_session_or_a_token(client):
    # (api/tests/test_docs.py: with a token, and TOKIOS_API_DOCS_PUBLIC.)
    assert client.get("/api/schema/").status_code == 401
    assert client.get("/api/orgs/").status_code == 401


def test_the_browsable_root_links_the_org_list(client, owner):
    client.force_login(owner)
    body = client.get("/api/", HTTP_ACCEPT="application/json").json()
    assert body["orgs"] == "http://testserver/api/orgs/"
