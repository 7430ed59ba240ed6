"""billing/metering.py on SQLite: batches are written from the event loop, never waiting for a lock.

These build their own SQLite database (a file: the loop writes through a connection of its own), so
they run whatever database the rest of the suite uses.
"""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import UTC, datetime

import pytest
from django.db.utils import ConnectionHandler

from billing import metering
from billing.models import UsageEvent

pytestmark = pytest.mark.asyncio


@pytest.fixture
def sqlite_db(tmp_path, django_db_blocker):
    """A Django connection to a fresh SQLite file holding the usage table, set up as settings do."""
    path = tmp_path / "usage.sqlite3"
    handler = ConnectionHandler(
        {
            "default": {
                "ENGINE": "django.db.backends.sqlite3",
                "NAME": str(path),
                "OPTIONS": {"init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;"},
            }
        }
    )
    connection = handler["default"]
    with django_db_blocker.unblock():
        with connection.schema_editor() as editor:
            editor.create_model(UsageEvent)
        connection.close()
    metering._checkpoint.update(last=0.0, pending=False)
    yield connection
    metering.close_connections()


def stored(connection, *, wal: bool = True) -> dict[str, tuple]:
    """The events in the file, read with plain sqlite3; wal=False reads the database file alone, as
    if the WAL did not exist (what a checkpoint has copied)."""
    name = connection.settings_dict["NAME"]
    db = sqlite3.connect(name) if wal else sqlite3.connect(f"file:{name}?immutable=1", uri=True)
    try:
        rows = db.execute(
            f"SELECT request_id, created_at, status_code, input_tokens, output_tokens, usage_estimated, "
            f"cost_micros, ttft_ms, streamed, cancelled, error_code FROM {UsageEvent._meta.db_table}"
        ).fetchall()
    finally:
        db.close()
    return {row[0]: row[1:] for row in rows}


def record(request_id: str, **fields) -> metering.UsageRecord:
    return metering.UsageRecord(request_id=request_id, surface="chat", status_code=200, **fields)


async def test_the_loop_writes_a_batch_itself_with_every_field_as_django_would(sqlite_db):
    written = record(
        "req_a",
        input_tokens=12,
        output_tokens=10**12,
        usage_estimated=True,
        cost_micros=56,
        ttft_ms=9,
        streamed=True,
        cancelled=True,
        error_code="e" * 80,
    )

    assert await metering._write_sqlite([written, record("req_b")], sqlite_db) is True

    rows = stored(sqlite_db)
    created = sqlite_db.ops.adapt_datetimefield_value(datetime.fromtimestamp(written.created_at, tz=UTC))
    assert rows["req_a"] == (created, 200, 12, 2_147_483_647, 1, 56, 9, 1, 1, "e" * 64)
    assert rows["req_b"][1:] == (200, 0, 0, 0, 0, None, 0, 0, "")


async def test_a_batch_written_twice_is_stored_once(sqlite_db):
    batch = [record(f"req_{i}") for i in range(3)]

    assert await metering._write_sqlite(batch, sqlite_db)
    assert await metering._write_sqlite(batch, sqlite_db)

    assert sorted(stored(sqlite_db)) == ["req_0", "req_1", "req_2"]


async def test_while_another_connection_writes_the_batch_goes_to_the_thread_without_waiting(sqlite_db):
    other = sqlite3.connect(sqlite_db.settings_dict["NAME"], isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # holds the write lock, as an admin's or the roll-up's transaction would
    try:
        assert await metering._write_sqlite([record("req_locked")], sqlite_db) is False
        assert stored(sqlite_db) == {}
    finally:
        other.execute("ROLLBACK")
        other.close()

    assert await metering._write_sqlite([record("req_locked")], sqlite_db) is True  # what the thread would do
    assert list(stored(sqlite_db)) == ["req_locked"]
    own = metering._sqlite_connections[sqlite_db.settings_dict["NAME"]]
    assert own.execute("PRAGMA busy_timeout").fetchone() == (0,)  # it never waited for the lock


async def test_a_large_batch_is_written_in_chunks_with_the_loop_free_between_them(sqlite_db, monkeypatch):
    monkeypatch.setattr(metering, "LOOP_CHUNK", 2)
    seen_meanwhile = []

    async def another_request():
        seen_meanwhile.append(len(stored(sqlite_db)))

    asyncio.get_running_loop().call_soon(asyncio.ensure_future, another_request())
    assert await metering._write_sqlite([record(f"req_{i}") for i in range(5)], sqlite_db)

    assert len(stored(sqlite_db)) == 5
    assert seen_meanwhile and 0 < seen_meanwhile[0] < 5  # it ran while the batch was half written


async def test_the_writer_thread_checkpoints_the_wal_the_loop_leaves_alone(sqlite_db):
    assert await metering._write_sqlite([record("req_first")], sqlite_db)
    for _ in range(200):  # the checkpoint runs in the writer thread
        if not metering._checkpoint["pending"]:
            break
        await asyncio.sleep(0.01)
    assert list(stored(sqlite_db, wal=False)) == ["req_first"]  # in the database file itself

    assert await metering._write_sqlite([record("req_second")], sqlite_db)  # within CHECKPOINT_SECONDS: no checkpoint

    assert sorted(stored(sqlite_db)) == ["req_first", "req_second"]
    assert list(stored(sqlite_db, wal=False)) == ["req_first"]  # the loop's connection did not checkpoint
    own = metering._sqlite_connections[sqlite_db.settings_dict["NAME"]]
    assert own.execute("PRAGMA wal_autocheckpoint").fetchone() == (0,)  # and never will


async def test_an_in_memory_database_is_left_to_the_writer_thread(django_db_blocker):
    memory = ConnectionHandler({"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}})["default"]

    assert await metering._write_sqlite([record("req_memory")], memory) is False
    assert metering._sqlite_connections == {}


async def test_a_failed_write_raises_for_the_retry_and_drops_the_connection(sqlite_db):
    name = sqlite_db.settings_dict["NAME"]
    assert await metering._write_sqlite([record("req_before")], sqlite_db)
    first = metering._sqlite_connections[name]
    other = sqlite3.connect(name)
    other.execute(f"ALTER TABLE {UsageEvent._meta.db_table} RENAME TO gone")  # as if the file were replaced
    other.close()

    with pytest.raises(sqlite3.OperationalError):
        await metering._write_sqlite([record("req_lost_try")], sqlite_db)

    assert name not in metering._sqlite_connections
    with pytest.raises(sqlite3.ProgrammingError):
        first.execute("SELECT 1")  # closed
