"""The rules of one connector, many models (Deployment.clean_served_by, clean_fallbacks), shared by the
actions, the Django admin (Model.clean) and the commands; and the names suggested for announced models."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.core.management.base import CommandError

from accounts.models import AuditLog
from deployments.actions import create_connector_token, create_deployment, update_deployment
from deployments.lifecycle import delete_deployment, deletion_impact
from deployments.models import ConnectorToken, Deployment, suggest_deployment_name

pytestmark = pytest.mark.django_db


@pytest.fixture
def served(org, deployment):
    return create_deployment(org=org, name="qwen-small", upstream_model="qwen2.5:0.5b", served_by=deployment)


def refusal(exc: pytest.ExceptionInfo[ValidationError], field: str) -> str:
    return " ".join(exc.value.message_dict[field])


def test_a_deployment_is_served_only_by_an_unserved_one_of_its_own_org(org, deployment, served, other_deployment):
    with pytest.raises(ValidationError) as other_org:
        create_deployment(org=org, name="x1", served_by=other_deployment)
    with pytest.raises(ValidationError) as chained:
        create_deployment(org=org, name="x2", served_by=served)
    with pytest.raises(ValidationError) as itself:
        update_deployment(deployment=served, served_by=served)

    assert "another organisation" in refusal(other_org, "served_by")
    assert "itself served" in refusal(chained, "served_by")
    assert "by itself" in refusal(itself, "served_by")
    assert not Deployment.objects.filter(name__in=["x1", "x2"]).exists()


def test_a_server_cannot_be_served_nor_a_deployment_with_its_own_tokens(org, deployment, served, connector_token):
    plain = create_deployment(org=org, name="phi-4")
    with pytest.raises(ValidationError) as serves_others:
        update_deployment(deployment=deployment, served_by=plain)
    served.served_by = None
    served.save()
    with pytest.raises(ValidationError) as has_tokens:
        update_deployment(deployment=deployment, served_by=plain)

    assert "serves other deployments" in refusal(serves_others, "served_by")
    assert "revoke them before" in refusal(has_tokens, "served_by")
    deployment.refresh_from_db()
    assert deployment.served_by is None


def test_the_admin_path_refuses_too(org, deployment, served):
    deployment.served_by = served
    with pytest.raises(ValidationError) as exc:
        deployment.full_clean()
    assert "served_by" in exc.value.message_dict


def test_a_served_deployment_gets_no_connector_token(served):
    with pytest.raises(ValidationError, match="create connector tokens there instead"):
        create_connector_token(deployment=served)
    with pytest.raises(CommandError, match="create connector tokens there instead"):
        call_command("create_connector_token", served.name, stdout=StringIO())
    assert not ConnectorToken.objects.filter(deployment=served).exists()


def test_the_command_creates_a_served_deployment_without_a_token(org, deployment):
    out = StringIO()
    call_command(
        "create_deployment",
        "phi4-14b",
        "--org",
        "acme",
        "--upstream-model",
        "phi4:14b",
        "--served-by",
        deployment.name,
        stdout=out,
    )
    created = Deployment.objects.get(name="phi4-14b")
    assert (created.served_by, created.upstream_model) == (deployment, "phi4:14b")
    assert "served by gemma-tunnel" in out.getvalue() and "sk-" not in out.getvalue()
    assert not created.connector_tokens.exists()


def test_fallbacks_are_replaced_in_order_and_audited(org, deployment, served, granted_deployment):
    update_deployment(deployment=served, fallbacks=[granted_deployment, deployment])
    update_deployment(deployment=served, fallbacks=[deployment])

    assert [link.fallback for link in served.fallback_links.all()] == [deployment]
    entries = AuditLog.objects.filter(action="deployment.updated", target=served.name).order_by("id")
    assert [e.detail["fallbacks"] for e in entries] == [[granted_deployment.name, deployment.name], [deployment.name]]


@pytest.mark.parametrize(
    ("model", "name"),
    [
        ("llama3.2:1b", "llama3.2-1b"),
        ("Qwen/Qwen2.5-7B-Instruct-GGUF:Q4_K_M", "qwen-qwen2.5-7b-instruct-gguf-q4_k_m"),
        ("--gemma--", "gemma"),
        ("::", "model"),
        ("ü" * 10, "model"),
        ("a" * 300, "a" * 64),
        ("x" * 63 + ":y", "x" * 63),
    ],
)
def test_suggested_names_are_valid_deployment_names(model, name):
    assert suggest_deployment_name(model) == name


def test_deleting_a_server_says_which_deployments_it_served_and_frees_them(org, deployment, served):
    assert deletion_impact(deployment).served_deployments == ["qwen-small"]
    impact = delete_deployment(deployment=deployment)

    served.refresh_from_db()
    assert impact.served_deployments == ["qwen-small"] and served.served_by is None
    assert AuditLog.objects.get(action="deployment.deleted").detail["served_deployments"] == ["qwen-small"]
