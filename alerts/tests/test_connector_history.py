"""A deployment's connect history for people (alerts/connector_history.py): close codes in words, the
close code the tunnel records with each disconnect, and uptime over 24 hours and 7 days computed from
the history and the connectors live now."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.db import connections

from alerts import connector_history
from alerts.connector_history import close_words, recent_events, uptime, uptimes
from alerts.models import ConnectorEvent, ConnectorEventKind
from deployments.models import ConnectorToken, Deployment
from proxy.tests.test_consumer import Link
from proxy.tunnel import presence
from proxy.tunnel.presence import ConnectorInfo

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)


@pytest.fixture
def old_deployment(deployment) -> Deployment:
    """`deployment`, created a month before NOW: every window is whole."""
    Deployment.objects.filter(pk=deployment.pk).update(created_at=NOW - 30 * DAY)
    deployment.refresh_from_db()
    return deployment


def event(deployment, kind: str, ago: timedelta, connector: str = "conn_a", token=None, code: int | None = None):
    return ConnectorEvent.objects.create(
        deployment=deployment, kind=kind, connector_id=connector, token=token, at=NOW - ago, close_code=code
    )


def live_info(deployment, connector: str, since: datetime) -> ConnectorInfo:
    return ConnectorInfo(
        channel=f"test!{connector}",
        deployment_id=deployment.pk,
        token_id=0,
        connector_id=connector,
        version="1",
        remote="127.0.0.1:1",
        connected_since=since.timestamp(),
        last_heartbeat=time.time(),
    )


def percent(deployment, window: timedelta, live=()) -> float | None:
    return uptime(deployment, now=NOW, window=window, live=list(live)).percent


H = timedelta(hours=1)


@pytest.mark.parametrize(
    ("code", "reason", "words"),
    [
        (
            1006,
            "connector_disconnected",
            "connection lost (no close frame: network failure, or the connector was killed)",
        ),
        (1001, "connector_disconnected", "the connector stopped (or went away)"),
        (4008, "connector_disconnected", "heartbeat timeout (the connector went silent)"),
        (4003, "connector_disconnected", "token revoked (or deployment deleted)"),
        (4002, "connector_protocol_error", "protocol error"),
        (4999, "", "closed with code 4999"),
        (None, "connector_protocol_error", "protocol error"),  # a row from before close codes
        (None, "", "the server stopped before it could say"),
    ],
)
def test_close_codes_read_as_words(code, reason, words):
    assert close_words(code, reason) == words


@pytest.mark.django_db
def test_a_connection_inside_the_window_counts_its_length(old_deployment):
    event(old_deployment, "connected", 20 * H)
    event(old_deployment, "disconnected", 10 * H, code=1006)

    assert percent(old_deployment, DAY) == pytest.approx(100 * 10 / 24)
    assert percent(old_deployment, 7 * DAY) == pytest.approx(100 * 10 / (7 * 24))


@pytest.mark.django_db
def test_a_connection_from_before_the_window_counts_from_its_start(old_deployment):
    event(old_deployment, "connected", 30 * H)
    event(old_deployment, "disconnected", 22 * H)

    assert percent(old_deployment, DAY) == pytest.approx(100 * 2 / 24)
    assert percent(old_deployment, 7 * DAY) == pytest.approx(100 * 8 / (7 * 24))


@pytest.mark.django_db
def test_overlapping_connectors_count_once_and_a_live_one_runs_to_now(old_deployment):
    event(old_deployment, "connected", 12 * H, connector="conn_a")
    event(old_deployment, "connected", 10 * H, connector="conn_b")
    event(old_deployment, "disconnected", 8 * H, connector="conn_a")
    live = [live_info(old_deployment, "conn_b", NOW - 10 * H)]

    assert percent(old_deployment, DAY, live) == pytest.approx(100 * 12 / 24)


@pytest.mark.django_db
def test_a_live_connector_whose_connect_was_pruned_is_up_the_whole_window(old_deployment):
    live = [live_info(old_deployment, "conn_old", NOW - 40 * DAY)]

    assert percent(old_deployment, 7 * DAY, live) == 100.0
    assert percent(old_deployment, 7 * DAY) == 0.0


@pytest.mark.django_db
def test_a_connection_whose_end_was_never_written_ends_at_its_tokens_last_heartbeat(old_deployment, connector_token):
    ConnectorToken.objects.filter(pk=connector_token.pk).update(last_seen_at=NOW - 6 * H)
    event(old_deployment, "connected", 10 * H, token=connector_token)

    assert percent(old_deployment, DAY) == pytest.approx(100 * 4 / 24)


@pytest.mark.django_db
def test_or_at_its_tokens_next_connect_after_a_server_restart(old_deployment, connector_token):
    ConnectorToken.objects.filter(pk=connector_token.pk).update(last_seen_at=NOW - 1 * H)
    event(old_deployment, "connected", 10 * H, connector="conn_a", token=connector_token)  # its server died
    event(old_deployment, "connected", 9 * H, connector="conn_b", token=connector_token)
    event(old_deployment, "disconnected", 5 * H, connector="conn_b", token=connector_token)

    assert percent(old_deployment, DAY) == pytest.approx(100 * 5 / 24)


@pytest.mark.django_db
def test_a_young_deployment_is_measured_since_it_was_created(deployment):
    Deployment.objects.filter(pk=deployment.pk).update(created_at=NOW - 4 * H)
    deployment.refresh_from_db()
    event(deployment, "connected", 3 * H)

    day, week = uptimes(deployment, now=NOW, live=[])
    assert (day.label, week.label) == ("24h", "7d")
    assert day.measured == week.measured == 4 * H
    assert day.percent == week.percent == pytest.approx(75.0)
    assert (day.whole, week.whole) == (False, False)
    assert uptime(deployment, now=NOW, window=2 * H, live=[]).whole is True
    created_now = uptime(deployment, now=NOW - 4 * H, window=DAY, live=[])
    assert created_now.percent is None


@pytest.mark.django_db
def test_past_the_row_cap_the_uptime_says_it_is_approximate(old_deployment, monkeypatch):
    monkeypatch.setattr(connector_history, "MAX_UPTIME_EVENTS", 4)
    for hour in range(6, 0, -1):
        event(old_deployment, "connected", hour * H, connector=f"c{hour}")
        event(old_deployment, "disconnected", hour * H - timedelta(minutes=30), connector=f"c{hour}")

    result = uptime(old_deployment, now=NOW, window=DAY, live=[])
    assert result.approximate is True
    assert result.up == timedelta(minutes=60)  # the last two connections, read from the four newest rows


@pytest.mark.django_db
def test_the_history_names_the_token_and_the_cause(old_deployment, connector_token):
    event(old_deployment, "connected", 2 * H, token=connector_token)
    event(old_deployment, "disconnected", 1 * H, token=connector_token, code=4008)

    newest, oldest = recent_events(old_deployment)
    assert (newest.kind, newest.token_label, newest.close_code) == ("disconnected", "gpu-box", 4008)
    assert newest.cause == "heartbeat timeout (the connector went silent)"
    assert (oldest.kind, oldest.cause) == ("connected", "")
    assert len(recent_events(old_deployment, limit=1)) == 1


async def _rows():
    return await sync_to_async(list)(
        ConnectorEvent.objects.order_by("id").values_list("kind", "connector_id", "token_id", "close_code")
    )


async def _wait_for_rows(count: int) -> list:
    for _ in range(500):  # up to 10 s: the rows are written from the consumer's own tasks
        rows = await _rows()
        if len(rows) >= count:
            return rows
        await asyncio.sleep(0.02)
    return await _rows()


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(("how", "code"), [("killed", 1006), ("draining", 1001), ("revoked", 4003)])
async def test_a_real_connector_leaves_its_close_code_in_the_history(deployment, connector_token, how, code):
    link = Link(connector_token.secret)
    try:
        await link.open()
        welcome = await link.hello()
        if how == "revoked":
            await get_channel_layer().group_send(presence.token_group(connector_token.pk), {"type": "tunnel.revoked"})
            assert (await link.closed())[0] == 4003
        else:
            await link.ws.send_input({"type": "websocket.disconnect", "code": code})
            await link.ws.wait(5)
        rows = await _wait_for_rows(2)
    finally:
        await sync_to_async(connections.close_all)()
    # In either order: each row is written by its signal's receiver in a thread of its own, and a
    # connector that leaves within milliseconds may see its disconnect written first.
    assert sorted(rows) == [
        (ConnectorEventKind.CONNECTED, welcome.connector_id, connector_token.pk, None),
        (ConnectorEventKind.DISCONNECTED, welcome.connector_id, connector_token.pk, code),
    ]
