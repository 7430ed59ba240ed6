"""The deployment page's state controls: disable and enable, delete after a confirmation that says
what goes with it, and the live part (status, connectors with their tokens' labels, uptime, connect
history) that dashboard.js refreshes from a small JSON endpoint. Owners and admins only; members get
403, another org's deployment is a 404 on every URL."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from accounts.models import AuditLog
from alerts.models import ConnectorEvent
from dashboard.tests.conftest import connector_info
from deployments.actions import grant_model
from deployments.lifecycle import disable_deployment
from deployments.models import ConnectorToken, Deployment

pytestmark = pytest.mark.django_db


def url(name: str, deployment) -> str:
    return reverse(f"dashboard:{name}", args=[deployment.pk])


@pytest.mark.parametrize("persona", ["as_owner", "as_admin"])
def test_owners_and_admins_disable_and_enable_a_deployment(request, persona, deployment):
    client = request.getfixturevalue(persona)

    response = client.post(url("deployment_disable", deployment), follow=True)
    assert response.redirect_chain == [(url("deployment_detail", deployment), 302)]
    assert Deployment.objects.get(pk=deployment.pk).is_disabled
    page = response.text
    assert 'id="disabled-notice"' in page and "503 <code>deployment_disabled</code>" in page
    assert 'badge-muted">disabled' in page
    assert 'badge-muted">disabled' in client.get(reverse("dashboard:deployments")).text
    assert 'badge-muted">disabled' in client.get(reverse("dashboard:overview")).text

    response = client.post(url("deployment_enable", deployment), follow=True)
    assert not Deployment.objects.get(pk=deployment.pk).is_disabled
    assert 'id="disabled-notice"' not in response.text
    assert list(
        AuditLog.objects.filter(action__in=["deployment.disabled", "deployment.enabled"]).values_list(
            "action", flat=True
        )
    ) == ["deployment.enabled", "deployment.disabled"]


def test_switching_needs_a_post(as_owner, deployment):
    assert as_owner.get(url("deployment_disable", deployment)).status_code == 405
    assert as_owner.get(url("deployment_enable", deployment)).status_code == 405
    assert not Deployment.objects.get(pk=deployment.pk).is_disabled


def test_members_get_403_and_outsiders_404_on_every_state_url(as_member, as_outsider, deployment):
    for name in ["deployment_disable", "deployment_enable", "deployment_delete"]:
        assert as_member.post(url(name, deployment), {"confirm_name": deployment.name}).status_code == 403, name
        assert as_outsider.post(url(name, deployment), {"confirm_name": deployment.name}).status_code == 404, name
    for name in ["deployment_delete", "deployment_live"]:
        assert as_member.get(url(name, deployment)).status_code == 403, name
        assert as_outsider.get(url(name, deployment)).status_code == 404, name
    assert Deployment.objects.filter(pk=deployment.pk, disabled_at__isnull=True).exists()


def test_the_delete_page_says_what_goes_with_it(
    as_owner, deployment, connector_token, restricted_key, other_org, granted_deployment
):
    grant_model(deployment=deployment, org=other_org)

    page = as_owner.get(url("deployment_delete", deployment)).text

    assert f"1 active token (<code>{connector_token.prefix}…</code>) is revoked" in page
    assert "every live connector is closed" in page
    assert "1 organisation (<code>globex</code>) loses access" in page
    assert "1 key lists it and loses it" in page
    assert "1 of them has no other model" in page and "gemma only" in page
    assert "a key is never widened to all models" in page
    assert "Usage history is kept" in page
    assert "autofocus" in page and 'name="confirm_name"' in page


def test_deleting_needs_the_name_typed_exactly(as_owner, deployment, connector_token):
    response = as_owner.post(url("deployment_delete", deployment), {"confirm_name": "gemma-tunne"})
    assert response.status_code == 400
    assert "Type gemma-tunnel exactly to delete it." in response.text
    assert Deployment.objects.filter(pk=deployment.pk).exists()

    response = as_owner.post(url("deployment_delete", deployment), {"confirm_name": " gemma-tunnel "}, follow=True)
    assert response.redirect_chain == [(reverse("dashboard:deployments"), 302)]
    assert not Deployment.objects.filter(name="gemma-tunnel").exists()
    assert not ConnectorToken.objects.exists()
    [message] = [str(m) for m in response.context["messages"]]
    assert message.startswith("Deployment gemma-tunnel deleted; its usage history is kept.")
    assert AuditLog.objects.filter(action="deployment.deleted", target="gemma-tunnel").count() == 1


def test_the_live_endpoint_gives_state_and_the_pages_own_fragments(as_owner, deployment, connector_token, live):
    ConnectorEvent.objects.create(
        deployment=deployment,
        kind="disconnected",
        connector_id="conn_gone",
        token=connector_token,
        close_code=4008,
        at=timezone.now() - timedelta(minutes=5),
    )
    offline = as_owner.get(url("deployment_live", deployment))
    assert offline.status_code == 200 and "no-cache" in offline["Cache-Control"]
    data = offline.json()
    assert (data["state"], data["connectors"]) == ("offline", [])
    assert set(data["fragments"]) == {"status", "deployment-connectors", "deployment-history", "deployment-models"}
    assert "offline" in data["fragments"]["status"]
    history = data["fragments"]["deployment-history"]
    assert "heartbeat timeout (the connector went silent)" in history and "(close 4008)" in history
    assert "gpu-box" in history
    assert "since it was created" in history  # a deployment younger than the windows
    assert "No connector connected — run this command" in data["fragments"]["deployment-connectors"]

    live[deployment.id] = [connector_info(deployment, connector_id="conn_live", token_id=connector_token.pk)]
    data = as_owner.get(url("deployment_live", deployment)).json()
    assert (data["state"], data["connectors"]) == ("online", ["conn_live"])
    assert "1 connector" in data["fragments"]["status"]
    row = data["fragments"]["deployment-connectors"]
    assert 'data-connector="conn_live"' in row and 'title="gpu-box">gpu-box' in row

    disable_deployment(deployment=deployment)
    data = as_owner.get(url("deployment_live", deployment)).json()
    assert data["state"] == "disabled" and "no traffic" in data["fragments"]["status"]


def test_the_detail_page_shows_token_labels_uptime_and_history_and_polls(as_owner, deployment, connector_token, live):
    Deployment.objects.filter(pk=deployment.pk).update(created_at=timezone.now() - timedelta(days=30))
    live[deployment.id] = [
        connector_info(deployment, connector_id="conn_x", token_id=connector_token.pk, connected_since=0.0)
    ]
    page = as_owner.get(url("deployment_detail", deployment)).text
    assert 'title="gpu-box">gpu-box' in page
    assert "Uptime, last 24 hours" in page and "Uptime, last 7 days" in page
    assert "<strong>100.00 %</strong>" in page  # live the whole window (its connect row is long gone)
    assert "since it was created" not in page
    assert f'data-live-url="{url("deployment_live", deployment)}"' in page and 'data-poll-seconds="5"' in page
    assert 'role="status" aria-live="polite"' in page


def test_a_connector_whose_token_is_unknown_shows_a_dash(as_owner, deployment, live):
    live[deployment.id] = [connector_info(deployment, token_id=999_999)]
    row = as_owner.get(url("deployment_live", deployment)).json()["fragments"]["deployment-connectors"]
    assert "<td>—</td>" in row


def test_the_live_endpoint_reads_a_bounded_number_of_queries(
    as_owner, deployment, connector_token, live, django_assert_max_num_queries
):
    live[deployment.id] = [
        connector_info(deployment, connector_id=f"c{i}", token_id=connector_token.pk) for i in range(5)
    ]
    for minute in range(30):
        ConnectorEvent.objects.create(
            deployment=deployment,
            kind="connected",
            connector_id=f"h{minute}",
            token=connector_token,
            at=timezone.now() - timedelta(minutes=minute),
        )
    # Session, user, membership, deployment; the tokens' labels; an active token?; the history; per
    # uptime its events and (connections without an end) their tokens' last heartbeat; the session saved.
    with django_assert_max_num_queries(14):
        assert as_owner.get(url("deployment_live", deployment)).status_code == 200
