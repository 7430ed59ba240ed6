"""One connector, many models, through the management API: the models a deployment's connectors announce
(`connector_models`), deployments created behind it (`served_by`, by name), routing (`surface_mode`,
ordered `fallbacks`), the model layer's refusals as 400s by field, and keys' `use_fallbacks`."""

from __future__ import annotations

import pytest

from accounts.models import ApiKey, AuditLog
from dashboard.tests.conftest import connector_info
from deployments.actions import create_deployment
from deployments.models import MAX_FALLBACKS, ConnectorToken, Deployment

pytestmark = pytest.mark.django_db

URL = "/api/orgs/acme/deployments/"


@pytest.fixture
def served(org, deployment):
    return create_deployment(org=org, name="qwen-small", upstream_model="qwen2.5:0.5b", served_by=deployment)


def test_a_deployment_shows_the_models_its_connectors_announce(api_admin, deployment, served, live):
    live[deployment.id] = [
        connector_info(deployment, models=["gemma-tunnel", "qwen2.5:0.5b"]),
        connector_info(deployment, connector_id="c-2", models=["qwen2.5:0.5b", "phi4:14b"]),
    ]
    body = {d["name"]: d for d in api_admin.get(URL).json()["results"]}

    assert body["gemma-tunnel"]["connector_models"] == ["gemma-tunnel", "qwen2.5:0.5b", "phi4:14b"]
    # A served deployment's connectors are its server's.
    served_view = body["qwen-small"]
    assert (served_view["served_by"], served_view["online"], len(served_view["connectors"])) == (
        "gemma-tunnel",
        True,
        2,
    )
    assert served_view["connector_models"] == body["gemma-tunnel"]["connector_models"]


def test_creating_a_deployment_for_an_announced_model(api_owner, org, deployment):
    response = api_owner.post(
        URL,
        {"name": "phi4-14b", "upstream_model": "phi4:14b", "served_by": "gemma-tunnel", "surface_mode": "translate"},
        format="json",
    )

    assert response.status_code == 201, response.json()
    created = Deployment.objects.get(name="phi4-14b")
    assert (created.served_by, created.upstream_model, created.surface_mode) == (deployment, "phi4:14b", "translate")
    assert response.json()["served_by"] == "gemma-tunnel" and response.json()["fallbacks"] == []
    entry = AuditLog.objects.get(org=org, action="deployment.created", target="phi4-14b")
    assert entry.detail == {"served_by": "gemma-tunnel"}


def test_fallbacks_are_kept_in_order_and_may_be_granted_models(api_owner, deployment, served, granted_deployment):
    url = f"{URL}{deployment.pk}/"
    response = api_owner.patch(url, {"fallbacks": [granted_deployment.name, served.name]}, format="json")

    assert response.status_code == 200, response.json()
    assert response.json()["fallbacks"] == [granted_deployment.name, served.name]
    response = api_owner.patch(url, {"fallbacks": [served.name, granted_deployment.name]}, format="json")
    assert response.json()["fallbacks"] == [served.name, granted_deployment.name]
    assert [link.fallback.name for link in deployment.fallback_links.all()] == [served.name, granted_deployment.name]
    entry = AuditLog.objects.filter(action="deployment.updated", target=deployment.name).latest("id")
    assert entry.detail["fallbacks"] == [served.name, granted_deployment.name]
    assert api_owner.patch(url, {"fallbacks": []}, format="json").json()["fallbacks"] == []


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"served_by": "globex-llama"}, "served_by", "does not exist"),  # another org's
        ({"served_by": "no-such-model"}, "served_by", "does not exist"),
        ({"served_by": "bad\x00name"}, "served_by", "does not exist"),
        ({"served_by": 7}, "served_by", "does not exist"),
        ({"served_by": "qwen-small"}, "served_by", "itself served"),
        ({"fallbacks": ["globex-llama"]}, "fallbacks", "may use"),
        ({"fallbacks": "gemma-tunnel"}, "fallbacks", "list"),
        ({"fallbacks": ["qwen-small", "qwen-small"]}, "fallbacks", "once"),
        ({"fallbacks": ["mistral-7b"]}, "fallbacks", "its own fallback"),
        ({"fallbacks": [f"m{i}" for i in range(MAX_FALLBACKS + 1)]}, "fallbacks", str(MAX_FALLBACKS)),
        ({"fallbacks": [None]}, "fallbacks", "null"),
        ({"surface_mode": "sideways"}, "surface_mode", "valid choice"),
    ],
)
def test_refusals_are_400s_by_field_and_change_nothing(api_owner, org, served, other_deployment, change, field, words):
    plain = create_deployment(org=org, name="mistral-7b")
    response = api_owner.patch(f"{URL}{plain.pk}/", change, format="json")

    assert response.status_code == 400
    assert words in str(response.json()[field]), response.json()
    plain.refresh_from_db()
    assert (plain.served_by, plain.surface_mode, plain.fallback_links.count()) == (None, "auto", 0)
    assert not AuditLog.objects.filter(action="deployment.updated").exists()


def test_a_deployment_that_serves_others_or_has_tokens_cannot_be_served(
    api_owner, org, deployment, served, connector_token
):
    server = create_deployment(org=org, name="phi-4")
    response = api_owner.patch(f"{URL}{deployment.pk}/", {"served_by": "phi-4"}, format="json")
    assert response.status_code == 400 and "serves other deployments" in str(response.json()["served_by"])
    served.served_by = None
    served.save()
    response = api_owner.patch(f"{URL}{deployment.pk}/", {"served_by": server.name}, format="json")
    assert response.status_code == 400 and "revoke them before" in str(response.json()["served_by"])
    response = api_owner.patch(f"{URL}{served.pk}/", {"served_by": served.name}, format="json")
    assert response.status_code == 400 and "by itself" in str(response.json()["served_by"])


def test_a_served_deployment_refuses_a_connector_token(api_owner, served):
    response = api_owner.post(f"{URL}{served.pk}/tokens/", {"name": "x"}, format="json")
    assert response.status_code == 400 and "create connector tokens there instead" in str(response.json())
    assert not ConnectorToken.objects.filter(deployment=served).exists()


def test_members_cannot_create_or_route_and_outsiders_get_404(api_member, api_outsider, deployment):
    assert api_member.post(URL, {"name": "x", "served_by": "gemma-tunnel"}, format="json").status_code == 403
    assert api_member.patch(f"{URL}{deployment.pk}/", {"surface_mode": "translate"}, format="json").status_code == 403
    outsider = api_outsider.patch(f"{URL}{deployment.pk}/", {"surface_mode": "translate"}, format="json")
    assert outsider.status_code == 404
    deployment.refresh_from_db()
    assert deployment.surface_mode == "auto" and not Deployment.objects.filter(name="x").exists()


def test_a_key_s_use_fallbacks_is_set_on_create_and_update(api_owner):
    response = api_owner.post("/api/orgs/acme/keys/", {"name": "agent", "use_fallbacks": True}, format="json")
    assert response.status_code == 201 and response.json()["use_fallbacks"] is True
    key = ApiKey.objects.get(name="agent")
    assert key.use_fallbacks is True
    response = api_owner.patch(f"/api/orgs/acme/keys/{key.pk}/", {"use_fallbacks": False}, format="json")
    assert response.status_code == 200 and response.json()["use_fallbacks"] is False
    key.refresh_from_db()
    assert key.use_fallbacks is False
    assert (
        api_owner.post("/api/orgs/acme/keys/", {"name": "b", "use_fallbacks": "maybe"}, format="json").status_code
        == 400
    )
