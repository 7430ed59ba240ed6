"""The deployments admin: a model's page lists the keys limited to it."""

from __future__ import annotations

import pytest

from accounts.models import User

pytestmark = pytest.mark.django_db


@pytest.fixture
def as_staff(client):
    client.force_login(User.objects.create_superuser("ops@example.com", "pw-for-tests-only"))
    return client


def test_a_deployments_page_lists_the_keys_limited_to_it(as_staff, restricted_key, key, deployment):
    page = as_staff.get(f"/admin/deployments/deployment/{deployment.pk}/change/").text
    assert str(restricted_key) in page
    assert str(key) not in page  # a key for every model is in no list


def test_adding_a_key_to_a_models_list_in_the_admin(as_staff, restricted_key, deployment, other_deployment):
    prefix = "Deployment_allowed_keys-"
    form = {
        "name": other_deployment.name,
        "org": other_deployment.org_id,
        "upstream_model": "",
        "price_input_micros": 0,
        "price_output_micros": 0,
        "surface_mode": "auto",
        "created_at_0": "2026-01-01",
        "created_at_1": "00:00:00",
        "grants-TOTAL_FORMS": 0,
        "grants-INITIAL_FORMS": 0,
        "fallback_links-TOTAL_FORMS": 0,
        "fallback_links-INITIAL_FORMS": 0,
        f"{prefix}TOTAL_FORMS": 1,
        f"{prefix}INITIAL_FORMS": 0,
        f"{prefix}0-apikey": restricted_key.pk,
    }
    response = as_staff.post(f"/admin/deployments/deployment/{other_deployment.pk}/change/", form)
    assert response.status_code == 302, response.text
    assert set(restricted_key.allowed_deployments.all()) == {deployment, other_deployment}
