"""The people and things every test suite shares, loaded as a plugin by the root conftest.py.

Two organisations: `org` (acme), whose `owner`, `admin` and `member` are its three roles, and
`other_org` (globex), owned by the `outsider`, who must see nothing of acme. acme's `deployment`
(priced), globex's `other_deployment` and `granted_deployment` (granted to acme, so acme's keys may
call it), API keys, and connector tokens.

A key or connector token fixture is the model instance with its one-time secret as `.secret`
(never stored; the test needs it to authenticate). `key` may call every model acme may use,
`restricted_key` only `deployment`, `revoked_key` nothing any more. Tests that run the request path
from another thread (the /v1 app, a server) need committed rows:
`@pytest.mark.django_db(transaction=True)`.
"""

from __future__ import annotations

import pytest

from accounts.actions import add_member, create_api_key, create_org, revoke_api_key
from accounts.models import Role, User
from deployments.actions import create_api_key as create_limited_api_key
from deployments.actions import create_connector_token, create_deployment, grant_model

PRICE_INPUT_MICROS = 100_000  # `deployment`: $0.10 per million input tokens
PRICE_OUTPUT_MICROS = 400_000  # and $0.40 per million output tokens


@pytest.fixture
def owner(db) -> User:
    return User.objects.create_user("owner@acme.test", "correct horse battery", name="Olive Owner")


@pytest.fixture
def org(owner):
    return create_org(slug="acme", name="Acme", owner=owner)


@pytest.fixture
def admin(org) -> User:
    user = User.objects.create_user("admin@acme.test", name="Ada Admin")
    add_member(org=org, user=user, role=Role.ADMIN)
    return user


@pytest.fixture
def member(org) -> User:
    user = User.objects.create_user("member@acme.test", name="Max Member")
    add_member(org=org, user=user, role=Role.MEMBER)
    return user


@pytest.fixture
def outsider(db) -> User:
    return User.objects.create_user("boss@globex.test", name="Otto Outsider")


@pytest.fixture
def other_org(outsider):
    return create_org(slug="globex", name="Globex", owner=outsider)


@pytest.fixture
def deployment(org):
    return create_deployment(
        org=org, name="gemma-tunnel", price_input_micros=PRICE_INPUT_MICROS, price_output_micros=PRICE_OUTPUT_MICROS
    )


@pytest.fixture
def other_deployment(other_org):
    return create_deployment(org=other_org, name="globex-llama")


@pytest.fixture
def granted_deployment(org, other_org):
    """globex's model, which acme may call through a grant."""
    shared = create_deployment(org=other_org, name="globex-shared", upstream_model="qwen3:8b")
    grant_model(deployment=shared, org=org)
    return shared


def _with_secret(created):
    instance, secret = created
    instance.secret = secret
    return instance


@pytest.fixture
def key(org, owner):
    return _with_secret(create_api_key(org=org, name="backend", created_by=owner))


@pytest.fixture
def restricted_key(org, owner, deployment):
    return _with_secret(create_limited_api_key(org=org, name="gemma only", created_by=owner, deployments=[deployment]))


@pytest.fixture
def revoked_key(org, owner):
    revoked = _with_secret(create_api_key(org=org, name="leaked", created_by=owner))
    revoke_api_key(key=revoked, actor=owner)
    return revoked


@pytest.fixture
def other_key(other_org):
    return _with_secret(create_api_key(org=other_org, name="globex key"))


@pytest.fixture
def connector_token(deployment):
    return _with_secret(create_connector_token(deployment=deployment, name="gpu-box"))


@pytest.fixture
def other_connector_token(other_deployment):
    return _with_secret(create_connector_token(deployment=other_deployment, name="globex box"))
