"""One connector, many models, in the dashboard: the models a deployment's connectors announce, with a
prefilled form to create a deployment served by it; a deployment's routing (surface mode, server,
ordered fallbacks); the rules of Deployment.clean_served_by as form errors; keys' "use fallbacks"."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest
from django.urls import reverse

from accounts.models import ApiKey, AuditLog
from accounts.once import new_form_token
from dashboard.tests.conftest import connector_info
from deployments.actions import create_deployment
from deployments.models import ConnectorToken, Deployment

pytestmark = pytest.mark.django_db


def detail(deployment) -> str:
    return reverse("dashboard:deployment_detail", args=[deployment.pk])


def routing(deployment) -> str:
    return reverse("dashboard:deployment_routing", args=[deployment.pk])


@pytest.fixture
def served(org, deployment):
    return create_deployment(org=org, name="qwen-small", upstream_model="qwen2.5:0.5b", served_by=deployment)


def test_the_page_lists_the_announced_models_with_a_link_to_create_one_for_each_new_model(
    as_owner, deployment, served, live
):
    live[deployment.id] = [connector_info(deployment, models=["gemma-tunnel", "qwen2.5:0.5b", "Qwen/Qwen2.5:7B"])]

    rows = as_owner.get(detail(deployment)).context["announced_models"]

    assert [(row.name, row.deployment) for row in rows] == [
        ("gemma-tunnel", deployment),
        ("qwen2.5:0.5b", served),
        ("Qwen/Qwen2.5:7B", None),
    ]
    url = urlsplit(rows[2].create_url)
    assert url.path == reverse("dashboard:deployment_create")
    assert parse_qs(url.query) == {
        "served_by": [str(deployment.pk)],
        "upstream_model": ["Qwen/Qwen2.5:7B"],
        "name": ["qwen-qwen2.5-7b"],
    }


def test_a_connector_without_a_model_list_says_so(as_owner, deployment, live):
    live[deployment.id] = [connector_info(deployment)]
    response = as_owner.get(detail(deployment))
    assert response.context["announced_models"] == []
    assert "announce no model list" in response.text


def test_creating_a_deployment_for_an_announced_model(as_admin, org, deployment, live):
    live[deployment.id] = [connector_info(deployment, models=["llama3.2:1b"])]
    link = as_admin.get(detail(deployment)).context["announced_models"][0].create_url

    form = as_admin.get(link).context["form"]
    assert (form["name"].value(), form["upstream_model"].value(), form["served_by"].value()) == (
        "llama3.2-1b",
        "llama3.2:1b",
        deployment.pk,
    )
    response = as_admin.post(
        reverse("dashboard:deployment_create"),
        {
            "form_token": form["form_token"].value(),
            "name": "llama3.2-1b",
            "upstream_model": "llama3.2:1b",
            "served_by": deployment.pk,
            "price_input_micros": "0.1",
            "price_output_micros": "0.2",
        },
    )

    created = Deployment.objects.get(name="llama3.2-1b")
    assert response.status_code == 302 and response["Location"] == detail(created)
    assert (created.served_by, created.upstream_model, created.price_input_micros) == (
        deployment,
        "llama3.2:1b",
        100_000,
    )
    entry = AuditLog.objects.get(org=org, action="deployment.created", target="llama3.2-1b")
    assert entry.detail == {"served_by": "gemma-tunnel"}
    page = as_admin.get(detail(created))
    assert "Served by the connectors of" in page.text and page.context["connectors"]  # its server's connector


def test_a_prefilled_create_link_with_a_hostile_server_id_is_only_a_blank_choice(as_owner, deployment):
    response = as_owner.get(reverse("dashboard:deployment_create"), {"served_by": "9" * 40, "name": "x" * 500})
    assert response.status_code == 200
    form = response.context["form"]
    assert form["served_by"].value() is None and len(form["name"].value()) == 64


def test_a_deployment_cannot_be_created_behind_another_org_s_or_a_served_one(
    as_owner, deployment, served, other_deployment
):
    for server in (other_deployment, served):
        response = as_owner.post(
            reverse("dashboard:deployment_create"),
            {
                "form_token": new_form_token(),
                "name": "sneaky",
                "served_by": server.pk,
                "price_input_micros": "0",
                "price_output_micros": "0",
            },
        )
        assert response.status_code == 200 and "served_by" in response.context["form"].errors
    assert not Deployment.objects.filter(name="sneaky").exists()


def test_a_served_deployment_has_no_token_form_and_refuses_a_token(as_owner, served):
    page = as_owner.get(detail(served))
    assert 'action="' + reverse("dashboard:deployment_token_create", args=[served.pk]) not in page.text

    response = as_owner.post(
        reverse("dashboard:deployment_token_create", args=[served.pk]), {"form_token": new_form_token(), "name": "x"}
    )

    assert response.status_code == 400
    assert "create connector tokens there instead" in response.text
    assert not ConnectorToken.objects.filter(deployment=served).exists()


def test_routing_saves_surface_mode_server_and_ordered_fallbacks_with_an_audit_entry(
    as_owner, org, deployment, granted_deployment
):
    plain = create_deployment(org=org, name="mistral-7b")
    response = as_owner.post(
        routing(plain),
        {
            "surface_mode": "translate",
            "served_by": deployment.pk,
            "fallback_1": granted_deployment.pk,
            "fallback_3": deployment.pk,
        },
    )

    assert response.status_code == 302
    plain.refresh_from_db()
    assert (plain.surface_mode, plain.served_by) == ("translate", deployment)
    assert [link.fallback for link in plain.fallback_links.all()] == [granted_deployment, deployment]
    entry = AuditLog.objects.get(org=org, action="deployment.updated", target="mistral-7b")
    assert entry.detail["changes"] == ["fallbacks", "served_by", "surface_mode"]
    assert entry.detail["fallbacks"] == [granted_deployment.name, deployment.name]
    form = as_owner.get(detail(plain)).context["routing_form"]
    assert (form["fallback_1"].value(), form["fallback_2"].value()) == (granted_deployment.pk, deployment.pk)


def test_routing_refuses_what_the_model_layer_refuses_and_changes_nothing(
    as_owner, org, deployment, served, connector_token, other_deployment
):
    plain = create_deployment(org=org, name="mistral-7b")
    cases = [
        (deployment, {"surface_mode": "auto", "served_by": plain.pk}, "serves other deployments"),
        (plain, {"surface_mode": "auto", "served_by": served.pk}, "Select a valid choice"),
        (plain, {"surface_mode": "auto", "fallback_1": other_deployment.pk}, "Select a valid choice"),
        (plain, {"surface_mode": "auto", "fallback_1": deployment.pk, "fallback_2": deployment.pk}, "listed once"),
        (plain, {"surface_mode": "sideways"}, "Select a valid choice"),
        (plain, {"surface_mode": "auto", "served_by": "1 OR 1=1"}, "Select a valid choice"),
    ]
    for target, data, message in cases:
        response = as_owner.post(routing(target), data)
        assert response.status_code == 400 and message in response.text, (target, data)
    # A deployment with a token of its own cannot become served: its connector would serve no one.
    other_server = create_deployment(org=org, name="phi-4")
    response = as_owner.post(routing(deployment), {"surface_mode": "auto", "served_by": other_server.pk})
    assert response.status_code == 400
    for row in (deployment, plain):
        row.refresh_from_db()
    assert deployment.served_by is None and plain.served_by is None and not plain.fallback_links.exists()
    assert not AuditLog.objects.filter(action="deployment.updated").exists()


def test_a_deployment_with_its_own_token_cannot_become_served(as_owner, org, connector_token):
    server = create_deployment(org=org, name="phi-4")
    deployment = connector_token.deployment
    response = as_owner.post(routing(deployment), {"surface_mode": "auto", "served_by": server.pk})
    assert response.status_code == 400 and "revoke them before" in response.text


def test_members_cannot_route_and_outsiders_get_404(as_member, as_outsider, deployment):
    data = {"surface_mode": "translate"}
    assert as_member.post(routing(deployment), data).status_code == 403
    assert as_outsider.post(routing(deployment), data).status_code == 404
    deployment.refresh_from_db()
    assert deployment.surface_mode == "auto"


def test_a_key_can_be_made_and_edited_to_use_fallbacks(as_owner, org):
    form = as_owner.get(reverse("dashboard:key_create")).context["form"]
    as_owner.post(
        reverse("dashboard:key_create"),
        {"form_token": form["form_token"].value(), "name": "agent", "use_fallbacks": "on"},
    )
    key = ApiKey.objects.get(name="agent")
    assert key.use_fallbacks is True
    assert (
        "a request for an offline or full model goes to its fallbacks"
        in as_owner.get(reverse("dashboard:key_detail", args=[key.pk])).text
    )

    response = as_owner.post(reverse("dashboard:key_edit", args=[key.pk]), {"name": "agent"})

    assert response.status_code == 302
    key.refresh_from_db()
    assert key.use_fallbacks is False
    entry = AuditLog.objects.get(action="key.updated", target=key.prefix)
    assert "use_fallbacks" in entry.detail["changes"]
