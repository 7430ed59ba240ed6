from __future__ import annotations

import pytest

from accounts.secrets import hash_secret
from dashboard.tests.conftest import connector_info
from deployments.models import ConnectorToken, Deployment, ModelGrant

pytestmark = pytest.mark.django_db

URL = "/api/orgs/acme/deployments/"


def test_list_shows_my_deployments_with_live_connectors(api_admin, deployment, other_deployment, live):
    live[deployment.id] = [connector_info(deployment, version="0.9.0", remote="192.0.2.1:1234")]
    results = api_admin.get(URL).json()["results"]
    assert [d["name"] for d in results] == ["gemma-tunnel"]
    assert results[0]["online"] is True
    connector = results[0]["connectors"][0]
    assert (connector["version"], connector["remote"], connector["inflight"]) == ("0.9.0", "192.0.2.1:1234", 3)
    assert connector["connected_since"].endswith("Z") or "+00:00" in connector["connected_since"]


def test_an_offline_deployment_has_no_connectors(api_owner, deployment):
    body = api_owner.get(f"{URL}{deployment.pk}/").json()
    assert body["online"] is False and body["connectors"] == []


def test_create_and_update_prices(api_owner, org):
    response = api_owner.post(
        URL, {"name": "phi-4", "price_input_micros": 10, "price_output_micros": 20}, format="json"
    )
    assert response.status_code == 201
    deployment = Deployment.objects.get(name="phi-4")
    assert deployment.org == org and deployment.price_input_micros == 10
    response = api_owner.patch(
        f"{URL}{deployment.pk}/", {"price_output_micros": 99, "upstream_model": "phi"}, format="json"
    )
    assert response.status_code == 200 and response.json()["price_output_micros"] == 99
    deployment.refresh_from_db()
    assert (deployment.price_output_micros, deployment.upstream_model) == (99, "phi")


def test_names_are_validated_and_global(api_owner, other_deployment):
    response = api_owner.post(URL, {"name": "globex-llama"}, format="json")
    assert response.status_code == 400 and "already exists" in str(response.json())
    assert api_owner.post(URL, {"name": "Not OK"}, format="json").status_code == 400
    assert api_owner.post(URL, {"name": "ok", "price_input_micros": -1}, format="json").status_code == 400


def test_the_name_cannot_change(api_owner, deployment):
    api_owner.patch(f"{URL}{deployment.pk}/", {"name": "renamed"}, format="json")
    deployment.refresh_from_db()
    assert deployment.name == "gemma-tunnel"


def test_connector_token_secret_and_command_only_in_the_create_response(api_owner, deployment):
    response = api_owner.post(f"{URL}{deployment.pk}/tokens/", {"name": "box"}, format="json")
    assert response.status_code == 201
    body = response.json()
    token = ConnectorToken.objects.get(pk=body["id"])
    assert token.token_hash == hash_secret(body["secret"]) and token.deployment == deployment
    assert body["command"] == (
        f"python -m tokios_connector --server http://testserver --token {body['secret']} "
        "--upstream http://127.0.0.1:8080/v1"
    )
    listed = api_owner.get(f"{URL}{deployment.pk}/tokens/").json()["results"]
    assert [t["prefix"] for t in listed] == [token.prefix] and "secret" not in listed[0]


def test_revoking_a_connector_token(api_owner, deployment, connector_token):
    response = api_owner.post(f"{URL}{deployment.pk}/tokens/{connector_token.pk}/revoke/")
    assert response.status_code == 200 and response.json()["status"] == "revoked"
    connector_token.refresh_from_db()
    assert connector_token.revoked_at is not None


def test_grants_create_list_and_delete(api_owner, deployment, other_org):
    response = api_owner.post(f"{URL}{deployment.pk}/grants/", {"org": "globex"}, format="json")
    assert response.status_code == 201 and response.json()["org"] == "globex"
    assert [g["org"] for g in api_owner.get(f"{URL}{deployment.pk}/grants/").json()["results"]] == ["globex"]
    assert api_owner.post(f"{URL}{deployment.pk}/grants/", {"org": "globex"}, format="json").status_code == 400
    grant = ModelGrant.objects.get()
    assert api_owner.delete(f"{URL}{deployment.pk}/grants/{grant.pk}/").status_code == 204
    assert ModelGrant.objects.count() == 0


def test_grants_to_unknown_or_own_orgs_are_refused(api_owner, deployment):
    assert api_owner.post(f"{URL}{deployment.pk}/grants/", {"org": "nobody"}, format="json").status_code == 400
    assert api_owner.post(f"{URL}{deployment.pk}/grants/", {"org": "acme"}, format="json").status_code == 400
    assert ModelGrant.objects.count() == 0
