"""Two server processes, three connectors, 200 concurrent two-second streams beside two slow
readers: every stream completes, and a slow reader costs a server little memory.

A CI-sized run of bench/scale.py (the full benchmark is 1,000 streams of 8 s). Requests go
round-robin over the processes, so many reach a connector held by the other process through the
channel layer. It uses its own PostgreSQL database (created and dropped on the server DATABASE_URL
names, beside pytest-django's) and its own Redis database (one of 11..15, claimed with a lock key):
the stack's ids start at 1 and would otherwise share presence and limit keys in Redis with other
tests' stacks.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis

from bench.scale import MIB, Load, raise_fd_limit, run_load
from bench.stack import Stack, with_database

pytestmark = [pytest.mark.e2e, pytest.mark.postgres, pytest.mark.redis]

REDIS_DATABASES = range(11, 16)  # 0 is the suite's, 9 and 10 the benchmarks'
LOCK = "tokios-scale-test:lock"


@pytest.fixture
def scale_redis_url() -> Iterator[str]:
    """A Redis database no one else is using, flushed, and flushed again after."""
    base = urlsplit(os.environ["REDIS_URL"])
    owner = uuid.uuid4().hex
    for number in REDIS_DATABASES:
        url = urlunsplit(base._replace(path=f"/{number}"))
        client = redis.Redis.from_url(url, socket_timeout=10)
        # The lock expires on its own should this process be killed before it cleans up.
        if client.set(LOCK, owner, nx=True, ex=300):
            with client.pipeline(transaction=True) as pipe:  # atomic: no one sees it free meanwhile
                pipe.flushdb().set(LOCK, owner, ex=300).execute()
            try:
                yield url
            finally:
                client.flushdb()
                client.close()
            return
        client.close()
    pytest.fail(f"every Redis database in {list(REDIS_DATABASES)} is held by another scale test run")


@pytest.mark.timeout(180)
def test_two_hundred_streams_across_two_processes_complete_beside_slow_readers(scale_redis_url):
    raise_fd_limit(2048)
    database_url = with_database(os.environ["DATABASE_URL"], f"tokios_scale_{uuid.uuid4().hex[:10]}")
    # Two slow readers (one per process) of ~9.5 MB streams, opened first and left open: more than
    # the kernel's socket buffers take, so a tunnel without flow control has to hold it (the old
    # one filled the channel layer, lost its connector and failed the other streams with 500).
    load = Load(streams=200, stream_seconds=2.0, chunk_ms=100, slow_readers=2, slow_words=50_000, timeout=30.0)
    with Stack(
        database_url=database_url,
        redis_url=scale_redis_url,
        processes=2,
        connectors=3,
        max_concurrency=400,
        flush_redis=False,
    ) as stack:
        report = asyncio.run(run_load(stack, load))
    table = report.table()
    print(table)
    failed, hung, ok = sum(report.failed.values()), report.hung, report.ok  # plain numbers in a failure
    assert failed == 0 and hung == 0 and ok == 200, f"{table}\nlogs: {stack.log_dir}"
    slow_ends = dict(report.slow)
    assert slow_ends == {"status 200": 2, "still open at the end": 2}, table
    # The credit window bounds what a server holds per stream (256 blocks of 4 KiB); the
    # kernel's socket buffers come on top and are not counted here.
    per_slow_reader_mib = report.per_slow_reader / MIB
    assert per_slow_reader_mib < 2, table
    stack.cleanup()
