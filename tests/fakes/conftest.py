from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.fakes.process import running_fake_upstream


@pytest.fixture(scope="session")
def fake_upstream_origin() -> Iterator[str]:
    with running_fake_upstream() as origin:
        yield origin


@pytest.fixture
def origin(fake_upstream_origin: str) -> str:
    """The fake upstream (a TEST DOUBLE) with its counters zeroed."""
    httpx.post(f"{fake_upstream_origin}/_fake/reset").raise_for_status()
    return fake_upstream_origin
