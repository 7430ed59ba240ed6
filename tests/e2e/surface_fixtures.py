"""Fixtures shared by the surface e2e modules (messages, responses, models); import them by name.

`settle_usage_writes` (autouse where imported): the server writes each request's usage event
up to ~50 ms after the response (billing/metering.py). A test that ends right after its last response
would have pytest-django's teardown TRUNCATE the tables while that INSERT runs, and the event could
land in the next test. Waiting until the row count stops moving avoids it.

`strict_server`: one extra server per module with a 1000-byte body limit and a 1 s upstream
silence timeout, for the 413 and 504 tests (cheaper than a server per test).
"""

from __future__ import annotations

import time

import pytest

from tests.e2e.conftest import Server, _spawn_server, base_env, free_port


@pytest.fixture(autouse=True)
def settle_usage_writes(transactional_db):
    yield
    from billing.models import UsageEvent

    deadline = time.monotonic() + 3
    last = -1
    while time.monotonic() < deadline:
        count = UsageEvent.objects.count()
        if count == last:
            return
        last = count
        time.sleep(0.04)


@pytest.fixture(scope="module")
def strict_server(_db_env) -> Server:
    port = free_port()
    env = base_env(**_db_env, TOKIOS_MAX_BODY_BYTES="1000", TOKIOS_UPSTREAM_TIMEOUT="1")
    server = Server(url=f"http://127.0.0.1:{port}", proc=_spawn_server(port, env), env=env, port=port)
    yield server
    server.proc.stop()
