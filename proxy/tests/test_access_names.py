"""A model name that no deployment can have (deployments.models.DEPLOYMENT_NAME_RE) is answered
404 without a query, and a secret with odd characters 401: nothing a client sends as a name reaches
a text column it could break (PostgreSQL refuses a NUL in text) or fills the access cache."""

from __future__ import annotations

import pytest
from asgiref.sync import async_to_sync
from django.db import connection
from django.test.utils import CaptureQueriesContext

from proxy import access
from proxy.access import AccessDenied

authenticate = async_to_sync(access.authenticate_key)
get_deployment = async_to_sync(access.get_deployment)
deployment_for = async_to_sync(access.deployment_for)

NOT_NAMES = ["\x00", "gemma-tunnel\x00", "gemma-tunnel\n", "Gemma-Tunnel", "-gemma", "g" * 65, "gemma tunnel", "é"]


@pytest.fixture(autouse=True)
def _fresh_local_cache():
    access.clear_local_cache()
    yield
    access.clear_local_cache()


@pytest.mark.parametrize("name", NOT_NAMES)
@pytest.mark.django_db(transaction=True)
def test_a_name_no_deployment_can_have_is_unknown_without_a_query(key, deployment, name):
    record = authenticate(key.secret)
    with CaptureQueriesContext(connection) as queries:
        with pytest.raises(AccessDenied) as caught:
            deployment_for(record, name)
        assert get_deployment(name) is None
    assert (caught.value.status, caught.value.code, caught.value.param) == (404, "model_not_found", "model")
    assert queries.captured_queries == []


@pytest.mark.django_db(transaction=True)
def test_a_valid_name_is_still_looked_up(key, deployment):
    assert deployment_for(authenticate(key.secret), "gemma-tunnel").name == "gemma-tunnel"


@pytest.mark.parametrize("secret", ["sk-tokios-\x00", "sk-tokios-a\x00b", "sk-tokios-\n", "sk-tokios-ÿ"])
@pytest.mark.django_db(transaction=True)
def test_a_secret_with_odd_characters_is_a_401(secret):
    with pytest.raises(AccessDenied) as caught:
        authenticate(secret)
    assert (caught.value.status, caught.value.code) == (401, "invalid_api_key")
