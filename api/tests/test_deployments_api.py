from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from accounts.actions import add_member, create_personal_access_token
from accounts.models import Role
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
        f"TOKIOS_CONNECTOR_TOKEN={body['secret']} python -m tokios_connector --server http://testserver "
        "--upstream http://127.0.0.1:8080/v1"
    )
    listed = api_owner.get(f"{URL}{deployment.pk}/tokens/").json()["results"]
    assert [t["prefix"] for t in listed] == [token.prefix] and "secret" not in listed[0]


def test_revoking_a_connector_token(api_owner, deployment, connector_token):
    response = api_owner.post(f"{URL}{deployment.pk}/tokens/{connector_token.pk}/revoke/")
    assert response.status_code == 200 and response.json()["status"] == "revoked"
    connector_token.refresh_from_db()
    assert connector_token.revoked_at is not None


def test_grants_create_list_and_delete(api_owner, owner, deployment, other_org):
    add_member(org=other_org, user=owner, role=Role.MEMBER)  # an org one may grant to is an org one belongs to
    response = api_owner.post(f"{URL}{deployment.pk}/grants/", {"org": "globex"}, format="json")
    assert response.status_code == 201 and response.json()["org"] == "globex"
    assert [g["org"] for g in api_owner.get(f"{URL}{deployment.pk}/grants/").json()["results"]] == ["globex"]
    assert api_owner.post(f"{URL}{deployment.pk}/grants/", {"org": "globex"}, format="json").status_code == 400
    grant = ModelGrant.objects.get()
    assert api_owner.delete(f"{URL}{deployment.pk}/grants/{grant.pk}/").status_code == 204
    assert ModelGrant.objects.count() == 0


def test_grants_to_unknown_or_own_orgs_are_refused(api_owner, org, deployment):
    for value in ("nobody", "acme", org.share_id):
        assert api_owner.post(f"{URL}{deployment.pk}/grants/", {"org": value}, format="json").status_code == 400
    assert ModelGrant.objects.count() == 0


def test_a_grant_by_share_id_lets_in_an_org_i_do_not_belong_to(api_owner, deployment, other_org):
    response = api_owner.post(f"{URL}{deployment.pk}/grants/", {"org": other_org.share_id}, format="json")
    assert response.status_code == 201
    assert (response.json()["org"], response.json()["org_name"]) == ("globex", "Globex")
    assert ModelGrant.objects.get().org == other_org
    again = api_owner.post(f"{URL}{deployment.pk}/grants/", {"org": other_org.share_id}, format="json")
    assert again.status_code == 400 and "already has access" in str(again.json())


MISS = {"org": ["No organisation with this share ID or slug among yours."]}


def test_a_grant_answers_alike_for_a_missing_org_and_one_i_may_not_see(api_owner, deployment, other_org):
    share_id = other_org.share_id
    values = {
        "missing slug": "nobody",
        "another org's slug": "globex",
        "unknown share ID": share_id[:-1] + ("A" if share_id[-1] != "A" else "B"),
        "share ID in the wrong case": share_id.upper(),
        "a slug dressed as a share ID": "org_globex",
        "too long": share_id * 40,
        "NUL": "glob\x00ex",
    }
    answers = {
        name: api_owner.post(f"{URL}{deployment.pk}/grants/", {"org": value}, format="json")
        for name, value in values.items()
    }
    assert {name: (r.status_code, r.json()) for name, r in answers.items()} == {name: (400, MISS) for name in values}
    for shapeless in ("", None, 7, ["globex"]):  # refused for their shape, before any lookup
        assert api_owner.post(f"{URL}{deployment.pk}/grants/", {"org": shapeless}, format="json").status_code == 400
    assert ModelGrant.objects.count() == 0


def test_a_personal_token_sees_only_its_own_org_by_slug_but_any_by_share_id(owner, org, deployment, other_org):
    add_member(org=other_org, user=owner, role=Role.MEMBER)
    _, secret = create_personal_access_token(user=owner, org=org, name="ci", role=Role.OWNER)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    response = client.post(f"{URL}{deployment.pk}/grants/", {"org": "globex"}, format="json")
    assert (response.status_code, response.json()) == (400, MISS)
    assert ModelGrant.objects.count() == 0
    response = client.post(f"{URL}{deployment.pk}/grants/", {"org": other_org.share_id}, format="json")
    assert response.status_code == 201
    assert ModelGrant.objects.get().org == other_org
