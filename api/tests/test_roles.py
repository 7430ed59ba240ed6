"""Every org-scoped endpoint: outsiders get 404, members 403 on management, anonymous 401."""

from __future__ import annotations

import pytest

from accounts.models import ApiKey, Membership, Role
from deployments.models import ConnectorToken, ModelGrant

pytestmark = pytest.mark.django_db


@pytest.fixture
def objects(org, key, deployment, connector_token, member, other_org):
    from deployments.actions import grant_model

    grant = grant_model(deployment=deployment, org=other_org)
    return {
        "key": key.pk,
        "dep": deployment.pk,
        "tok": connector_token.pk,
        "grant": grant.pk,
        "mem": Membership.objects.get(user=member).pk,
    }


MANAGEMENT = [
    ("get", "/api/orgs/acme/keys/"),
    ("post", "/api/orgs/acme/keys/"),
    ("get", "/api/orgs/acme/keys/{key}/"),
    ("patch", "/api/orgs/acme/keys/{key}/"),
    ("post", "/api/orgs/acme/keys/{key}/revoke/"),
    ("post", "/api/orgs/acme/keys/{key}/rotate/"),
    ("post", "/api/orgs/acme/keys/{key}/end-grace/"),
    ("post", "/api/orgs/acme/keys/{key}/pause/"),
    ("post", "/api/orgs/acme/keys/{key}/resume/"),
    ("post", "/api/orgs/acme/keys/{key}/expiry/"),
    ("get", "/api/orgs/acme/deployments/"),
    ("post", "/api/orgs/acme/deployments/"),
    ("get", "/api/orgs/acme/deployments/{dep}/"),
    ("patch", "/api/orgs/acme/deployments/{dep}/"),
    ("get", "/api/orgs/acme/deployments/{dep}/tokens/"),
    ("post", "/api/orgs/acme/deployments/{dep}/tokens/"),
    ("post", "/api/orgs/acme/deployments/{dep}/tokens/{tok}/revoke/"),
    ("get", "/api/orgs/acme/deployments/{dep}/grants/"),
    ("post", "/api/orgs/acme/deployments/{dep}/grants/"),
    ("delete", "/api/orgs/acme/deployments/{dep}/grants/{grant}/"),
    ("get", "/api/orgs/acme/members/"),
    ("post", "/api/orgs/acme/members/"),
    ("patch", "/api/orgs/acme/members/{mem}/"),
    ("delete", "/api/orgs/acme/members/{mem}/"),
    ("get", "/api/orgs/acme/invitations/"),
]
READABLE = [("get", "/api/orgs/acme/usage/"), ("get", "/api/orgs/acme/statements/")]
BODY = {"name": "x", "org": "globex", "email": "x@y.test", "role": "admin"}


def call(client, method, url, objects):
    return getattr(client, method)(url.format(**objects), BODY, format="json")


def unchanged(objects) -> bool:
    return (
        ApiKey.objects.filter(pk=objects["key"], revoked_at=None, paused_at=None, rotated_at=None).exists()
        and ApiKey.objects.count() == 1
        and ConnectorToken.objects.get(pk=objects["tok"]).revoked_at is None
        and ModelGrant.objects.filter(pk=objects["grant"]).exists()
        and Membership.objects.get(pk=objects["mem"]).role == Role.MEMBER
    )


@pytest.mark.parametrize(("method", "url"), MANAGEMENT + READABLE)
def test_outsiders_get_404(api_outsider, objects, method, url):
    assert call(api_outsider, method, url, objects).status_code == 404
    assert unchanged(objects)


@pytest.mark.parametrize(("method", "url"), MANAGEMENT)
def test_members_get_403_on_management(api_member, objects, method, url):
    assert call(api_member, method, url, objects).status_code == 403
    assert unchanged(objects)


@pytest.mark.parametrize(("method", "url"), READABLE)
def test_members_may_read_usage_and_statements(api_member, objects, method, url):
    assert call(api_member, method, url, objects).status_code == 200


@pytest.mark.parametrize(("method", "url"), MANAGEMENT + READABLE)
def test_anonymous_callers_get_401(client, objects, method, url):
    from rest_framework.test import APIClient

    assert call(APIClient(), method, url, objects).status_code == 401
    assert unchanged(objects)


@pytest.mark.parametrize(
    "url",
    [
        "/api/orgs/globex/keys/{other_key}/",
        "/api/orgs/acme/keys/{other_key}/",
        "/api/orgs/acme/deployments/{other_dep}/",
        "/api/orgs/acme/deployments/{other_dep}/tokens/",
        "/api/orgs/acme/deployments/{dep}/tokens/{other_tok}/",
    ],
)
def test_another_orgs_ids_under_my_org_are_404(
    api_owner, objects, other_key, other_deployment, other_connector_token, deployment, url
):
    ids = {
        "other_key": other_key.pk,
        "other_dep": other_deployment.pk,
        "other_tok": other_connector_token.pk,
        "dep": deployment.pk,
    }
    assert api_owner.get(url.format(**ids)).status_code == 404
