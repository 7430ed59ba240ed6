"""Connector alerts: a deployment without a connector for the configured minutes (and back), and
connectors that keep reconnecting, judged on the connect history the tunnel's signals leave."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest
from asgiref.sync import sync_to_async
from django.db import connections

from alerts.actions import update_settings
from alerts.evaluation import evaluate
from alerts.models import ConnectorEvent, ConnectorEventKind
from deployments.actions import create_connector_token, revoke_connector_token
from deployments.models import ConnectorToken
from proxy.tests.test_consumer import Link
from proxy.tunnel.presence import ConnectorInfo
from proxy.tunnel.signals import connector_connected, connector_disconnected

from .conftest import deliver_pending

T0 = datetime(2026, 11, 10, 12, 0, tzinfo=UTC)


def seen(token, at: datetime) -> None:
    """The tunnel writes a token's last_seen_at on connect and at every heartbeat."""
    ConnectorToken.objects.filter(pk=token.pk).update(last_seen_at=at)


def events(raised) -> list[str]:
    return [item.alert.event for item in raised]


def info(deployment, connector_id: str = "conn_1", token_id: int = 1) -> ConnectorInfo:
    now = time.time()
    return ConnectorInfo(
        channel=f"test!{connector_id}",
        deployment_id=deployment.pk,
        token_id=token_id,
        connector_id=connector_id,
        version="9.9.9",
        remote="127.0.0.1:1",
        connected_since=now,
        last_heartbeat=now,
    )


@pytest.mark.django_db
def test_a_webhook_hears_of_a_missing_connector_after_the_configured_minutes_once(
    org, deployment, connector_token, endpoint, receiver
):
    update_settings(org=org, connector_down_minutes=3, email_enabled=False)
    seen(connector_token, T0)  # its last heartbeat

    assert evaluate(now=T0 + timedelta(seconds=30)) == []  # online still
    assert evaluate(now=T0 + timedelta(minutes=2, seconds=59)) == []
    down = evaluate(now=T0 + timedelta(minutes=3))
    assert events(down) == ["connector_down.firing"]
    assert evaluate(now=T0 + timedelta(minutes=4)) == []
    assert evaluate(now=T0 + timedelta(hours=5)) == []

    seen(connector_token, T0 + timedelta(hours=5, minutes=1))  # a connector is back
    assert events(evaluate(now=T0 + timedelta(hours=5, minutes=1, seconds=5))) == ["connector_down.resolved"]
    assert evaluate(now=T0 + timedelta(hours=5, minutes=2)) == []

    deliver_pending()
    assert [p["event"] for p in receiver.signed()] == ["connector_down.firing", "connector_down.resolved"]
    assert len(receiver.received) == 2
    firing = receiver.signed()[0]
    assert firing["subject"] == f"deployment:{deployment.pk}"
    assert firing["data"]["deployment"] == "gemma-tunnel" and firing["data"]["minutes"] == 3


@pytest.mark.django_db
def test_a_connector_live_in_presence_counts_as_online(org, deployment, connector_token, monkeypatch):
    seen(connector_token, T0)
    monkeypatch.setattr("proxy.tunnel.presence.online_deployment_ids", lambda ids: set(ids))
    assert evaluate(now=T0 + timedelta(hours=1)) == []


@pytest.mark.django_db
def test_deployments_never_connected_or_with_every_token_revoked_are_not_watched(
    org, owner, deployment, connector_token, other_deployment
):
    update_settings(org=org, connector_down_minutes=1)
    create_connector_token(deployment=other_deployment, name="never used")
    assert evaluate(now=T0) == []  # `deployment` has a token that never connected

    seen(connector_token, T0)
    revoke_connector_token(token=connector_token, actor=owner)
    assert evaluate(now=T0 + timedelta(hours=1)) == []


@pytest.mark.django_db
def test_connector_down_alerts_can_be_switched_off(org, deployment, connector_token):
    update_settings(org=org, connector_down_enabled=False, flapping_enabled=False)
    seen(connector_token, T0)
    assert evaluate(now=T0 + timedelta(days=1)) == []


@pytest.mark.django_db
def test_flapping_fires_once_and_resolves_when_the_connectors_settle(org, deployment, connector_token, endpoint):
    update_settings(org=org, flapping_connects=4, flapping_window_minutes=10, connector_down_enabled=False)
    for minute in range(3):
        ConnectorEvent.objects.create(
            deployment=deployment, kind=ConnectorEventKind.CONNECTED, at=T0 + timedelta(minutes=minute)
        )
    assert evaluate(now=T0 + timedelta(minutes=3)) == []
    ConnectorEvent.objects.create(
        deployment=deployment, kind=ConnectorEventKind.CONNECTED, at=T0 + timedelta(minutes=3)
    )

    flapping = evaluate(now=T0 + timedelta(minutes=4))
    assert events(flapping) == ["connector_flapping.firing"]
    assert flapping[0].alert.data["connects"] == 4
    assert evaluate(now=T0 + timedelta(minutes=5)) == []
    # Two connects (half the threshold) are still in the window ten minutes after the first.
    assert evaluate(now=T0 + timedelta(minutes=11)) == []
    assert events(evaluate(now=T0 + timedelta(minutes=12))) == ["connector_flapping.resolved"]


@pytest.mark.django_db
def test_the_tunnels_signals_leave_the_connect_history(deployment, connector_token):
    connector_connected.send(sender=None, info=info(deployment, token_id=connector_token.pk))
    connector_disconnected.send(
        sender=None,
        info=info(deployment, token_id=connector_token.pk),
        reason="connector_disconnected",
        close_code=1006,
    )
    rows = ConnectorEvent.objects.order_by("id").values_list("kind", "connector_id", "token_id", "reason", "close_code")
    assert list(rows) == [
        ("connected", "conn_1", connector_token.pk, "", None),
        ("disconnected", "conn_1", connector_token.pk, "connector_disconnected", 1006),
    ]


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_a_real_connector_connecting_and_leaving_is_recorded(deployment, connector_token):
    link = Link(connector_token.secret)
    try:
        await link.open()
        welcome = await link.hello()
        await link.disconnect()
        rows = await sync_to_async(list)(ConnectorEvent.objects.order_by("id").values_list("kind", "connector_id"))
    finally:  # the consumer's thread holds a connection; the test database cannot be dropped under it
        await sync_to_async(connections.close_all)()
    assert rows == [("connected", welcome.connector_id), ("disconnected", welcome.connector_id)]
