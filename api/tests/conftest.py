import pytest  # noqa: E402
from rest_framework.test import APIClient  # noqa: E402

from dashboard.tests.conftest import *  # noqa: F401,F403  (signed-in clients, presence; personas: tests/personas.py)


def _api(user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


@pytest.fixture
def api_owner(owner, org) -> APIClient:
    return _api(owner)


@pytest.fixture
def api_admin(admin) -> APIClient:
    return _api(admin)


@pytest.fixture
def api_member(member) -> APIClient:
    return _api(member)


@pytest.fixture
def api_outsider(outsider, other_org) -> APIClient:
    return _api(outsider)
