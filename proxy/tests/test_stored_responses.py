"""Stored /v1/responses: each turn is stored once (its own input and output, linked to the response it
continued), a chain is read back in one query, a conversation is bounded, and conversations idle for
RESPONSES_RETENTION_DAYS are pruned by a daily task."""

from __future__ import annotations

import importlib
from datetime import timedelta

import pytest
from asgiref.sync import sync_to_async
from django.apps import apps as installed_apps
from django.conf import settings
from django.utils import timezone

from proxy import tasks
from proxy.models import StoredResponse

from .fake_call import streamed
from .v1 import V1_DB, call_v1

pytestmark = [V1_DB, pytest.mark.timeout(30)]

PATH = "/v1/responses"


def ask(model: str, text: str, **extra) -> dict:
    return {"model": model, "input": text, **extra}


async def turn(key, deployment, upstream, text: str, answer: str, previous: str | None = None):
    upstream.answer(*streamed(answer))
    extra = {"previous_response_id": previous} if previous else {}
    return await call_v1("POST", PATH, ask(deployment.name, text, **extra), secret=key.secret)


def said(item: dict) -> tuple[str, str]:
    return item["role"], item["content"][0]["text"]


# --- one row per turn, no history repeated ----------------------------------------------------------


@pytest.mark.asyncio
async def test_each_turn_stores_only_its_own_input_and_output_and_the_chain_is_replayed(
    key, deployment, upstream, ledger
):
    first = (await turn(key, deployment, upstream, "one", "uno")).json()
    second = (await turn(key, deployment, upstream, "two", "dos", first["id"])).json()
    third = await turn(key, deployment, upstream, "three", "tres", second["id"])

    assert third.status == 200
    sent = [(m["role"], m["content"]) for m in upstream.calls[2].body["messages"]]
    assert sent == [
        ("user", "one"),
        ("assistant", "uno"),
        ("user", "two"),
        ("assistant", "dos"),
        ("user", "three"),
    ]
    rows = await sync_to_async(lambda: list(StoredResponse.objects.order_by("turn")))()
    assert [r.id for r in rows] == [first["id"], second["id"], third.json()["id"]]
    assert [[said(item) for item in r.items] for r in rows] == [
        [("user", "one"), ("assistant", "uno")],
        [("user", "two"), ("assistant", "dos")],
        [("user", "three"), ("assistant", "tres")],
    ]
    assert [(r.previous_response_id, r.thread, r.turn) for r in rows] == [
        ("", first["id"], 1),
        (first["id"], first["id"], 2),
        (second["id"], first["id"], 3),
    ]
    assert rows[0].conversation_bytes < rows[1].conversation_bytes < rows[2].conversation_bytes


@pytest.mark.asyncio
async def test_a_branch_replays_its_own_ancestors_only(key, deployment, upstream, ledger):
    root = (await turn(key, deployment, upstream, "root", "r")).json()
    await turn(key, deployment, upstream, "left", "l", root["id"])
    right = (await turn(key, deployment, upstream, "right", "R", root["id"])).json()

    await turn(key, deployment, upstream, "more", "m", right["id"])

    sent = [m["content"] for m in upstream.calls[3].body["messages"]]
    assert sent == ["root", "r", "right", "R", "more"]


def store(org, id: str, items: list, *, previous: StoredResponse | None = None, **fields) -> StoredResponse:
    return StoredResponse.objects.create(
        id=id,
        org=org,
        model="gemma-tunnel",
        items=items,
        response={"id": id},
        previous_response_id=previous.id if previous else "",
        thread=previous.thread if previous else id,
        turn=previous.turn + 1 if previous else 1,
        **fields,
    )


def message(role: str, text: str) -> dict:
    kind = "output_text" if role == "assistant" else "input_text"
    return {"type": "message", "role": role, "content": [{"type": kind, "text": text}]}


def test_a_chain_is_read_in_one_query_oldest_first(org, other_org, django_assert_num_queries):
    row = None
    for n in range(30):
        row = store(org, f"resp_{n}", [message("user", f"q{n}"), message("assistant", f"a{n}")], previous=row)

    with django_assert_num_queries(1):
        chain = StoredResponse.objects.chain(org_id=org.id, response_id="resp_29")
    with django_assert_num_queries(1):
        elsewhere = StoredResponse.objects.chain(org_id=other_org.id, response_id="resp_29")

    assert [r.id for r in chain] == [f"resp_{n}" for n in range(30)]
    assert [r.items[0]["content"][0]["text"] for r in chain] == [f"q{n}" for n in range(30)]
    assert elsewhere == []


@pytest.mark.asyncio
async def test_a_response_stored_before_links_existed_still_chains(key, org, deployment, upstream, ledger):
    # Rows stored before this version hold the whole conversation so far, and no link.
    history = [message("user", "one"), message("assistant", "uno"), message("user", "two"), message("assistant", "dos")]
    await sync_to_async(store)(org, "resp_old", history)

    response = await turn(key, deployment, upstream, "three", "tres", "resp_old")

    assert response.status == 200
    sent = [m["content"] for m in upstream.call.body["messages"]]
    assert sent == ["one", "uno", "two", "dos", "three"]


def test_the_migration_makes_each_old_row_the_start_of_its_own_conversation(org):
    migration = importlib.import_module("proxy.migrations.0002_storedresponse_links")
    history = [message("user", "one"), message("assistant", "uno")]
    StoredResponse.objects.create(id="resp_old", org=org, model="m", items=history, response={})

    migration.link_old_rows(installed_apps, None)

    row = StoredResponse.objects.get(pk="resp_old")
    assert (row.thread, row.turn, row.previous_response_id) == ("resp_old", 1, "")
    assert row.conversation_bytes > len("one") + len("uno")


@pytest.mark.asyncio
async def test_a_chain_with_a_missing_link_is_not_found_and_the_model_is_not_called(
    key, org, deployment, upstream, ledger
):
    first = await sync_to_async(store)(org, "resp_a", [message("user", "one"), message("assistant", "uno")])
    second = await sync_to_async(store)(org, "resp_b", [message("user", "two")], previous=first)
    await sync_to_async(first.delete)()

    response = await call_v1(
        "POST", PATH, ask(deployment.name, "three", previous_response_id=second.id), secret=key.secret
    )

    error = response.json()["error"]
    assert (response.status, error["code"], error["param"]) == (
        400,
        "previous_response_not_found",
        "previous_response_id",
    )
    assert upstream.calls == []


# --- a conversation is bounded ------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_conversation_stops_growing_at_the_body_size_limit(key, deployment, upstream, ledger, settings):
    settings.MAX_BODY_BYTES = 3000
    # What a chain holds plus the new body may not exceed one body: the third turn would.
    first = (await turn(key, deployment, upstream, "x" * 1000, "ok")).json()
    second = (await turn(key, deployment, upstream, "y" * 1000, "ok", first["id"])).json()

    third = await turn(key, deployment, upstream, "z" * 1000, "ok", second["id"])

    error = third.json()["error"]
    assert (third.status, error["code"], error["param"]) == (400, "context_length_exceeded", "previous_response_id")
    assert len(upstream.calls) == 2


@pytest.mark.asyncio
async def test_a_conversation_stops_growing_at_the_turn_limit(key, org, deployment, upstream, ledger, monkeypatch):
    monkeypatch.setattr(StoredResponse, "MAX_TURNS", 3)
    row = None
    for n in range(3):
        row = await sync_to_async(store)(org, f"resp_{n}", [message("user", "q")], previous=row)

    response = await turn(key, deployment, upstream, "again", "no", row.id)

    assert (response.status, response.json()["error"]["code"]) == (400, "context_length_exceeded")
    assert upstream.calls == []


# --- retention ----------------------------------------------------------------------------------------


def test_conversations_idle_for_the_retention_period_are_pruned(org, settings):
    settings.RESPONSES_RETENTION_DAYS = 7
    now = timezone.now()
    old, recent = now - timedelta(days=8), now - timedelta(days=6)
    idle = store(org, "resp_idle", [], created_at=old)
    store(org, "resp_idle_2", [], previous=idle, created_at=old)
    live = store(org, "resp_live", [], created_at=old)  # its conversation went on last week
    store(org, "resp_live_2", [], previous=live, created_at=recent)
    store(org, "resp_new", [], created_at=recent)

    deleted = tasks.prune_stored_responses()
    again = tasks.prune_stored_responses()

    assert (deleted, again) == (2, 0)
    left = set(StoredResponse.objects.values_list("id", flat=True))
    assert left == {"resp_live", "resp_live_2", "resp_new"}


def test_the_retention_period_is_30_days_by_default_and_pruning_runs_daily():
    assert settings.RESPONSES_RETENTION_DAYS == 30
    scheduled = [
        entry for entry in settings.CELERY_BEAT_SCHEDULE.values() if entry["task"] == tasks.prune_stored_responses.name
    ]
    assert len(scheduled) == 1
