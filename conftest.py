"""Suite-wide rules: tests that need real services skip without them locally and fail in CI; the
persona fixtures (tests/personas.py) for every suite."""

from __future__ import annotations

import os

import pytest
from channels.layers import DEFAULT_CHANNEL_LAYER, channel_layers

from billing import metering  # pytest-django has set Django up before it loads this file

os.environ.setdefault("TOKIOS_HTTPS", "0")

pytest_plugins = ["tests.personas"]  # the shared people, organisations, models and keys

REQUIRE_SERVICES = os.environ.get("CI", "").lower() == "true" or os.environ.get("TOKIOS_REQUIRE_SERVICES") == "1"
NEEDS = {
    "redis": ("REDIS_URL", "set REDIS_URL=redis://127.0.0.1:6379/0 to run it"),
    "postgres": ("DATABASE_URL", "set DATABASE_URL=postgres://postgres@127.0.0.1:5432/test to run it"),
}


def pytest_runtest_setup(item: pytest.Item) -> None:
    for marker, (variable, hint) in NEEDS.items():
        if item.get_closest_marker(marker) and not os.environ.get(variable):
            message = f"needs {marker}: {variable} is not set ({hint})"
            if REQUIRE_SERVICES:
                pytest.fail(f"{message} — CI requires the real services", pytrace=False)
            pytest.skip(message)


@pytest.fixture(autouse=True)
def _close_usage_writer_connections():
    """The usage writer keeps an async database connection per event loop; each test has its own
    loop, and an open connection would keep the test database from being dropped."""
    yield
    metering.close_connections()


@pytest.fixture(autouse=True)
def _fresh_channel_layer():
    """Every test starts with a new channel layer. Each test has its own event loop, and
    channels-redis keeps per-channel receive locks (asyncio locks, bound to the loop that first used
    them) in its layer object: a receive one test left waiting kept its lock held, and the next test
    to receive on this process's channels failed with "bound to a different event loop"."""
    yield
    channel_layers.backends.pop(DEFAULT_CHANNEL_LAYER, None)
