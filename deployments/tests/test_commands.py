"""The deployments commands, and create_key (which may limit a key to deployments): a scriptable
interface with the secret alone on the last line."""

from __future__ import annotations

import os
import subprocess
import sys
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from accounts.models import ApiKey
from accounts.secrets import hash_secret
from deployments.models import ConnectorToken, Deployment, ModelGrant
from tests.e2e.conftest import _database_env


def run(*args) -> list[str]:
    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue().strip().splitlines()


pytestmark = pytest.mark.django_db


def test_create_deployment_prints_a_working_connector_token():
    run("create_org", "acme")
    lines = run(
        "create_deployment",
        "gemma-tunnel",
        "--org",
        "acme",
        "--upstream-model",
        "gemma3",
        "--price-input",
        "0.15",
        "--price-output",
        "0.6",
    )
    token = lines[-1]
    deployment = Deployment.objects.get(name="gemma-tunnel")
    assert deployment.upstream_model == "gemma3"
    assert deployment.price_input_micros == 150_000 and deployment.price_output_micros == 600_000
    assert ConnectorToken.objects.get(token_hash=hash_secret(token)).deployment == deployment


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["Bad Name", "--org", "acme"], "not a valid deployment name"),
        (["ok-name", "--org", "nope"], "No organisation"),
        (["ok-name", "--org", "acme", "--price-input", "cheap"], "--price-input"),
        (["ok-name", "--org", "acme", "--price-input", "-1"], "--price-input"),
    ],
)
def test_create_deployment_rejects_bad_input(args, message):
    run("create_org", "acme")
    with pytest.raises(CommandError, match=message):
        run("create_deployment", *args)


def test_create_deployment_rejects_a_duplicate_name_across_orgs():
    run("create_org", "acme")
    run("create_org", "beta")
    run("create_deployment", "shared", "--org", "acme")
    with pytest.raises(CommandError, match="already exists"):
        run("create_deployment", "shared", "--org", "beta")


def test_create_connector_token_adds_a_further_token():
    run("create_org", "acme")
    run("create_deployment", "m1", "--org", "acme")
    token = run("create_connector_token", "m1")[-1]
    assert ConnectorToken.objects.filter(deployment__name="m1").count() == 2
    assert ConnectorToken.objects.filter(token_hash=hash_secret(token)).exists()
    with pytest.raises(CommandError, match="No deployment"):
        run("create_connector_token", "nope")


def test_grant_model_and_its_errors():
    run("create_org", "acme")
    run("create_org", "beta")
    run("create_deployment", "m1", "--org", "acme")
    run("grant_model", "--org", "beta", "--deployment", "m1")
    assert ModelGrant.objects.filter(org__slug="beta", deployment__name="m1").exists()
    with pytest.raises(CommandError, match="already has access"):
        run("grant_model", "--org", "beta", "--deployment", "m1")
    with pytest.raises(CommandError, match="owners always have access"):
        run("grant_model", "--org", "acme", "--deployment", "m1")
    with pytest.raises(CommandError, match="No organisation"):
        run("grant_model", "--org", "zzz", "--deployment", "m1")


def test_create_key_prints_the_key_last_with_limits_and_models():
    run("create_org", "acme")
    run("create_deployment", "m1", "--org", "acme")
    secret = run(
        "create_key", "--org", "acme", "--name", "ci", "--model", "m1", "--rpm", "60", "--tpm", "1000", "--budget", "5"
    )[-1]
    key = ApiKey.objects.get(key_hash=hash_secret(secret))
    assert secret.startswith("sk-tokios-")
    assert (key.rpm_limit, key.tpm_limit, key.monthly_budget_micros) == (60, 1000, 5_000_000)
    assert not key.all_models and list(key.allowed_deployments.values_list("name", flat=True)) == ["m1"]


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["--org", "nope", "--name", "x"], "No organisation"),
        (["--org", "acme", "--name", "x", "--model", "nope"], "No deployment"),
        (["--org", "acme", "--name", "x", "--budget", "lots"], "--budget"),
        (["--org", "acme", "--name", "  "], "needs a name"),
    ],
)
def test_create_key_rejects_bad_input(args, error):
    run("create_org", "acme")
    with pytest.raises(CommandError, match=error):
        run("create_key", *args)


def test_create_key_rejects_a_non_positive_rate_limit():
    run("create_org", "acme")
    with pytest.raises(CommandError):
        run("create_key", "--org", "acme", "--name", "x", "--rpm", "0")


def test_commands_exit_non_zero_with_the_message_on_stderr():
    result = subprocess.run(
        [sys.executable, "manage.py", "create_key", "--org", "no-such-org", "--name", "x"],
        capture_output=True,
        text=True,
        env={**os.environ, **_database_env()},
    )
    assert result.returncode == 1
    assert "No organisation with slug 'no-such-org'" in result.stderr
    assert result.stdout == ""


def test_demo_setup_prints_a_working_connector_command_and_key_and_reuses_the_demo_org():
    lines = run("demo_setup", "--server", "http://tokios.test")
    command = next(line.strip() for line in lines if "python -m tokios_connector" in line)
    token = command.split("TOKIOS_CONNECTOR_TOKEN=")[1].split()[0]
    assert token.startswith("ctk-tokios-")
    assert command.endswith(
        " python -m tokios_connector --server http://tokios.test --upstream http://127.0.0.1:8080/v1"
    )
    assert ConnectorToken.objects.get(token_hash=hash_secret(token)).deployment.name == "gemma-tunnel"
    key = next(line.split()[-1] for line in lines if line.strip().startswith("API key:"))
    assert ApiKey.objects.get(key_hash=hash_secret(key)).org.slug == "demo"
    run("demo_setup")
    assert Deployment.objects.filter(name="gemma-tunnel").count() == 1
    assert ApiKey.objects.filter(org__slug="demo").count() == 2
