from __future__ import annotations

import re

import pytest
from django.test import Client
from django.urls import reverse

from accounts.actions import add_member
from accounts.models import AuditLog, Role
from accounts.once import new_form_token
from accounts.secrets import hash_secret
from dashboard.tests.conftest import connector_info
from deployments.models import ConnectorToken, Deployment, ModelGrant

pytestmark = pytest.mark.django_db


def detail(deployment) -> str:
    return reverse("dashboard:deployment_detail", args=[deployment.pk])


def _without_csrf(page: str) -> str:
    # and without the create forms' one-time tokens (accounts.once), random on every page
    return re.sub(r'name="(?:csrfmiddlewaretoken|form_token)" value="[^"]*"', "", page)


@pytest.mark.parametrize("persona", ["as_owner", "as_admin"])
def test_owners_and_admins_see_the_deployment_list_with_live_status(request, persona, deployment, live):
    client = request.getfixturevalue(persona)
    live[deployment.id] = [connector_info(deployment)]
    response = client.get(reverse("dashboard:deployments"))
    assert response.status_code == 200
    assert "gemma-tunnel" in response.text and "online" in response.text


def test_a_deployment_without_a_connector_is_offline(as_owner, deployment):
    response = as_owner.get(reverse("dashboard:deployments"))
    assert 'badge-bad">offline' in response.text


def test_members_get_403_on_deployment_pages_and_actions(as_member, deployment, connector_token):
    assert as_member.get(reverse("dashboard:deployments")).status_code == 403
    assert as_member.get(detail(deployment)).status_code == 403
    assert as_member.post(reverse("dashboard:deployment_create"), {"name": "x"}).status_code == 403
    url = reverse("dashboard:deployment_token_create", args=[deployment.pk])
    assert as_member.post(url, {"name": "sneaky"}).status_code == 403
    assert ConnectorToken.objects.filter(name="sneaky").count() == 0
    revoke = reverse("dashboard:deployment_token_revoke", args=[deployment.pk, connector_token.pk])
    assert as_member.post(revoke).status_code == 403
    connector_token.refresh_from_db()
    assert connector_token.revoked_at is None


def test_another_orgs_deployment_is_a_404_on_every_url(as_outsider, deployment, connector_token):
    pk = deployment.pk
    assert as_outsider.get(detail(deployment)).status_code == 404
    for name, args in [
        ("deployment_prices", [pk]),
        ("deployment_token_create", [pk]),
        ("deployment_token_revoke", [pk, connector_token.pk]),
        ("deployment_grant_create", [pk]),
    ]:
        response = as_outsider.post(reverse(f"dashboard:{name}", args=args), {"name": "x", "org": "globex"})
        assert response.status_code == 404, name
    connector_token.refresh_from_db()
    assert connector_token.revoked_at is None
    assert ModelGrant.objects.count() == 0


def test_a_token_of_another_deployment_is_a_404_under_mine(as_owner, deployment, other_connector_token):
    url = reverse("dashboard:deployment_token_revoke", args=[deployment.pk, other_connector_token.pk])
    assert as_owner.post(url).status_code == 404


def test_creating_a_deployment_stores_prices_in_micros(as_owner, org):
    response = as_owner.post(
        reverse("dashboard:deployment_create"),
        {
            "form_token": new_form_token(),
            "name": "qwen-coder",
            "upstream_model": "qwen2.5-coder",
            "price_input_micros": "0.15",
            "price_output_micros": "0.6",
        },
    )
    deployment = Deployment.objects.get(name="qwen-coder")
    assert response.status_code == 302 and response["Location"] == detail(deployment)
    assert (deployment.org, deployment.price_input_micros, deployment.price_output_micros) == (org, 150_000, 600_000)
    assert AuditLog.objects.filter(org=org, action="deployment.created", target="qwen-coder").exists()


def test_creating_a_deployment_with_a_taken_or_bad_name_shows_the_error(as_owner, deployment, other_deployment):
    response = as_owner.post(
        reverse("dashboard:deployment_create"),
        {"form_token": new_form_token(), "name": "globex-llama", "price_input_micros": "0", "price_output_micros": "0"},
    )
    assert response.status_code == 200 and "already exists" in response.text
    response = as_owner.post(
        reverse("dashboard:deployment_create"),
        {"form_token": new_form_token(), "name": "Bad Name!", "price_input_micros": "0", "price_output_micros": "0"},
    )
    assert "not a valid deployment name" in response.text
    assert Deployment.objects.count() == 2


def test_the_detail_page_shows_each_live_connector(as_owner, deployment, live):
    live[deployment.id] = [connector_info(deployment, version="0.3.1", remote="198.51.100.9:4242", inflight=5)]
    page = as_owner.get(detail(deployment)).text
    assert "198.51.100.9:4242" in page and "0.3.1" in page
    assert '<td class="num">5 / 64</td>' in page
    assert "No connector yet" not in page


def test_without_a_connector_the_page_shows_the_command_to_run(as_owner, deployment):
    page = as_owner.get(detail(deployment)).text
    assert "No connector yet — run this command" in page
    assert (
        "TOKIOS_CONNECTOR_TOKEN=&lt;token&gt; python -m tokios_connector --server http://testserver "
        "--upstream http://127.0.0.1:8080/v1"
    ) in page
    assert "--token" not in page.replace("--token-file", "")
    assert "create one first" in page


def test_a_connector_token_is_shown_once_and_stored_hashed(as_owner, deployment):
    response = as_owner.post(
        reverse("dashboard:deployment_token_create", args=[deployment.pk]),
        {"form_token": new_form_token(), "name": "gpu-2"},
    )
    assert response.status_code == 201
    assert "no-store" in response["Cache-Control"]
    token = ConnectorToken.objects.get(name="gpu-2")
    secret = response.context["secret"]
    assert secret.startswith("ctk-tokios-") and token.token_hash == hash_secret(secret)
    assert f"TOKIOS_CONNECTOR_TOKEN={secret} python -m tokios_connector --server" in response.text
    assert "--token" not in response.text.replace("--token-file", "")  # `ps` would show it to every local user
    assert 'data-copy="secret-value"' in response.text
    assert secret not in as_owner.get(detail(deployment)).text
    assert token.prefix in as_owner.get(detail(deployment)).text


def test_revoking_a_connector_token_asks_first_then_revokes(as_owner, deployment, connector_token):
    url = reverse("dashboard:deployment_token_revoke", args=[deployment.pk, connector_token.pk])
    confirm = as_owner.get(url)
    assert confirm.status_code == 200 and "Revoke connector token" in confirm.text
    connector_token.refresh_from_db()
    assert connector_token.revoked_at is None
    assert as_owner.post(url).status_code == 302
    connector_token.refresh_from_db()
    assert connector_token.revoked_at is not None


def test_prices_can_be_changed(as_admin, deployment):
    url = reverse("dashboard:deployment_prices", args=[deployment.pk])
    response = as_admin.post(
        url, {"upstream_model": "gemma-3", "price_input_micros": "1.25", "price_output_micros": "2"}
    )
    assert response.status_code == 302
    deployment.refresh_from_db()
    assert (deployment.upstream_model, deployment.price_input_micros, deployment.price_output_micros) == (
        "gemma-3",
        1_250_000,
        2_000_000,
    )


def test_negative_or_too_precise_prices_are_refused(as_owner, deployment):
    url = reverse("dashboard:deployment_prices", args=[deployment.pk])
    response = as_owner.post(url, {"price_input_micros": "-1", "price_output_micros": "0.0000001"})
    assert response.status_code == 200
    assert response.context["prices_form"].errors.keys() == {"price_input_micros", "price_output_micros"}
    deployment.refresh_from_db()
    assert deployment.price_input_micros == 100_000


def test_granting_and_revoking_access_for_another_org_i_belong_to(as_owner, owner, deployment, other_org):
    add_member(org=other_org, user=owner, role=Role.MEMBER)
    response = as_owner.post(reverse("dashboard:deployment_grant_create", args=[deployment.pk]), {"org": "globex"})
    assert response.status_code == 302
    grant = ModelGrant.objects.get(deployment=deployment, org=other_org)
    assert "Globex" in as_owner.get(detail(deployment)).text
    response = as_owner.post(reverse("dashboard:deployment_grant_revoke", args=[deployment.pk, grant.pk]))
    assert response.status_code == 302
    assert not ModelGrant.objects.filter(pk=grant.pk).exists()


def test_granting_by_share_id_lets_in_an_org_i_do_not_belong_to(as_owner, deployment, other_org):
    url = reverse("dashboard:deployment_grant_create", args=[deployment.pk])
    response = as_owner.post(url, {"org": f" {other_org.share_id} "}, follow=True)
    assert ModelGrant.objects.filter(deployment=deployment, org=other_org).exists()
    assert [str(m) for m in response.context["messages"]] == ["globex can now call gemma-tunnel."]
    assert "Globex" in as_owner.get(detail(deployment)).text


def test_granting_to_an_unknown_or_own_org_shows_an_error(as_owner, org, deployment):
    url = reverse("dashboard:deployment_grant_create", args=[deployment.pk])
    assert "No organisation with this share ID or slug among yours." in as_owner.post(url, {"org": "nobody"}).text
    assert "owners always have access" in as_owner.post(url, {"org": "acme"}).text
    assert "owners always have access" in as_owner.post(url, {"org": org.share_id}).text
    assert ModelGrant.objects.count() == 0


def _unknown_share_id(known: str) -> str:
    """Well-formed, and not `known`: the last character changed."""
    return known[:-1] + ("A" if known[-1] != "A" else "B")


@pytest.mark.parametrize(
    "hidden_value",
    [
        pytest.param(lambda other: "globex", id="another-orgs-slug"),
        pytest.param(lambda other: other.share_id.upper(), id="a-share-id-in-the-wrong-case"),
        pytest.param(lambda other: "org_" + other.slug, id="a-slug-dressed-as-a-share-id"),
    ],
)
def test_the_grant_form_answers_alike_for_a_missing_org_and_one_i_may_not_see(
    as_owner, deployment, other_org, hidden_value
):
    url = reverse("dashboard:deployment_grant_create", args=[deployment.pk])
    hidden_text = hidden_value(other_org)
    missing_text = "nobody"
    hidden = as_owner.post(url, {"org": hidden_text})
    missing = as_owner.post(url, {"org": missing_text})
    unknown_share_id = as_owner.post(url, {"org": _unknown_share_id(other_org.share_id)})
    assert missing.status_code == hidden.status_code == unknown_share_id.status_code == 200
    errors = {"org": ["No organisation with this share ID or slug among yours."]}
    assert missing.context["grant_form"].errors == hidden.context["grant_form"].errors == errors
    assert unknown_share_id.context["grant_form"].errors == errors
    assert _without_csrf(hidden.text).replace(hidden_text, missing_text) == _without_csrf(missing.text)
    assert "Globex" not in hidden.text
    assert ModelGrant.objects.count() == 0


def test_every_deployment_form_needs_a_csrf_token(owner, org, deployment):
    client = Client(enforce_csrf_checks=True)
    client.force_login(owner)
    response = client.post(reverse("dashboard:deployment_token_create", args=[deployment.pk]), {"name": "x"})
    assert response.status_code == 403
    assert ConnectorToken.objects.count() == 0
    page = client.get(detail(deployment)).text
    assert page.count('name="csrfmiddlewaretoken"') >= 4  # switcher/sign-out + token + prices + grant forms


def test_models_shared_with_my_org_are_listed_read_only(as_outsider, deployment, other_org):
    from deployments.actions import grant_model

    grant_model(deployment=deployment, org=other_org)
    page = as_outsider.get(reverse("dashboard:deployments")).text
    assert "Shared with you" in page and "gemma-tunnel" in page
    assert detail(deployment) not in page
