"""lib/redis.py: outage reports are rate-limited per kind of failure."""

from __future__ import annotations

import logging

from lib import redis as shared


def test_an_outage_is_logged_once_per_interval_and_per_kind(caplog, monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(shared.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(shared, "_last_reported", {})
    log = logging.getLogger("tokios.test")

    with caplog.at_level(logging.ERROR, logger="tokios.test"):
        for _ in range(5):
            shared.report_outage(log, "cache down", ConnectionError("refused"))
        shared.report_outage(log, "presence down", ConnectionError("refused"))
        clock[0] += 10
        shared.report_outage(log, "cache down", ConnectionError("still refused"))

    assert [r.getMessage() for r in caplog.records] == [
        "cache down: ConnectionError('refused')",
        "presence down: ConnectionError('refused')",
        "cache down: ConnectionError('still refused')",
    ]
