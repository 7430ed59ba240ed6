"""Prices are bounded by the model's validators (and key limits by accounts'), on every way of
setting them: the Django admin, the actions, the commands. A request's cost is then far inside 64
bits whatever its token counts."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.core.management.base import CommandError

from accounts.models import MAX_BUDGET_MICROS, MAX_RATE_LIMIT, ApiKey, User
from deployments.actions import create_deployment, update_deployment
from deployments.models import MAX_PRICE_MICROS, Deployment, validate_deployment_name

pytestmark = pytest.mark.django_db

MAX_TOKENS = 2**31 - 1  # what a request's token counts are clamped to before they are billed


def test_the_dearest_request_fits_64_bits_and_its_cost_a_double():
    deployment = Deployment(price_input_micros=MAX_PRICE_MICROS, price_output_micros=MAX_PRICE_MICROS)
    assert MAX_TOKENS * MAX_PRICE_MICROS * 2 < 2**63  # tokens × price, before the division
    assert deployment.cost_micros(MAX_TOKENS, MAX_TOKENS) < 2**53  # exact in Lua and in JSON numbers


@pytest.mark.parametrize("field", ["price_input_micros", "price_output_micros"])
@pytest.mark.parametrize("value", [MAX_PRICE_MICROS + 1, 2**63, -1])
def test_a_price_out_of_bounds_fails_validation(deployment, field, value):
    setattr(deployment, field, value)
    with pytest.raises(ValidationError) as caught:
        deployment.full_clean()
    assert field in caught.value.message_dict


def test_the_bound_itself_is_a_valid_price(deployment):
    deployment.price_input_micros = deployment.price_output_micros = MAX_PRICE_MICROS
    deployment.full_clean()


@pytest.mark.parametrize("field", ["price_input_micros", "price_output_micros"])
def test_create_deployment_refuses_a_price_past_the_bound(org, field):
    with pytest.raises(ValidationError):
        create_deployment(org=org, name="dear", **{field: MAX_PRICE_MICROS + 1})
    assert not Deployment.objects.filter(name="dear").exists()


@pytest.mark.parametrize("value", [MAX_PRICE_MICROS + 1, 9_000_000_000_000_000_000, -1, None])
def test_update_deployment_refuses_a_price_out_of_bounds(deployment, value):
    with pytest.raises(ValidationError):
        update_deployment(deployment=deployment, price_output_micros=value)
    deployment.refresh_from_db()
    assert deployment.price_output_micros == 400_000


@pytest.mark.parametrize("name", ["gemma\n", "gemma\x00", "\ngemma"])
def test_a_name_with_a_control_character_is_not_valid(name):
    with pytest.raises(ValidationError):
        validate_deployment_name(name)


@pytest.fixture
def as_staff(client):
    client.force_login(User.objects.create_superuser("ops@example.com", "pw-for-tests-only"))
    return client


def admin_form(deployment: Deployment, **changes) -> dict:
    form = {
        "name": deployment.name,
        "org": deployment.org_id,
        "upstream_model": "",
        "price_input_micros": deployment.price_input_micros,
        "price_output_micros": deployment.price_output_micros,
        "created_at_0": "2026-01-01",
        "created_at_1": "00:00:00",
        "surface_mode": "auto",
        "grants-TOTAL_FORMS": 0,
        "grants-INITIAL_FORMS": 0,
        "fallback_links-TOTAL_FORMS": 0,
        "fallback_links-INITIAL_FORMS": 0,
        "Deployment_allowed_keys-TOTAL_FORMS": 0,
        "Deployment_allowed_keys-INITIAL_FORMS": 0,
    }
    return {**form, **changes}


@pytest.mark.parametrize("value", [str(MAX_PRICE_MICROS + 1), "9000000000000000000", str(2**63)])
def test_the_admin_refuses_a_price_past_the_bound(as_staff, deployment, value):
    url = f"/admin/deployments/deployment/{deployment.pk}/change/"
    response = as_staff.post(url, admin_form(deployment, price_output_micros=value))
    assert response.status_code == 200  # the form again, with its error
    assert "less than or equal to" in response.text
    deployment.refresh_from_db()
    assert deployment.price_output_micros == 400_000


def test_the_admin_saves_the_bound_itself(as_staff, deployment):
    url = f"/admin/deployments/deployment/{deployment.pk}/change/"
    response = as_staff.post(url, admin_form(deployment, price_output_micros=str(MAX_PRICE_MICROS)))
    assert response.status_code == 302, response.text
    deployment.refresh_from_db()
    assert deployment.price_output_micros == MAX_PRICE_MICROS


def run(*args) -> None:
    call_command(*args, stdout=StringIO())


@pytest.mark.parametrize("flag", ["--price-input", "--price-output"])
def test_create_deployment_refuses_a_price_past_the_bound_by_its_flag(org, flag):
    with pytest.raises(CommandError, match=flag):
        run("create_deployment", "dear", "--org", org.slug, flag, "1000.000001")
    assert not Deployment.objects.filter(name="dear").exists()


def test_create_deployment_accepts_the_dearest_price(org):
    run("create_deployment", "dear", "--org", org.slug, "--price-output", "1000")
    assert Deployment.objects.get(name="dear").price_output_micros == MAX_PRICE_MICROS


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["--rpm", str(MAX_RATE_LIMIT + 1)], "--rpm"),
        (["--tpm", str(2**63)], "--tpm"),
        (["--budget", str(MAX_BUDGET_MICROS // 1_000_000 + 1)], "--budget"),
    ],
)
def test_create_key_refuses_a_limit_past_its_bound_by_its_flag(org, args, flag):
    with pytest.raises(CommandError, match=flag):
        run("create_key", "--org", org.slug, "--name", "ci", *args)
    assert not ApiKey.objects.filter(name="ci").exists()


def test_create_key_accepts_the_bounds_themselves(org):
    budget = str(MAX_BUDGET_MICROS // 1_000_000)
    run("create_key", "--org", org.slug, "--name", "ci", "--rpm", str(MAX_RATE_LIMIT), "--budget", budget)
    key = ApiKey.objects.get(name="ci")
    assert (key.rpm_limit, key.monthly_budget_micros) == (MAX_RATE_LIMIT, MAX_BUDGET_MICROS)
