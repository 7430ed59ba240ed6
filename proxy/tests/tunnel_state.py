"""The tunnel's process-wide state (sessions, presence, dispatch counts, queues), emptied between tests.

Sessions and presence belong to the process; a test must not see another test's connectors. Used
by proxy/tests/conftest.py and by the connector's tests against the real server (tests/connector/).
"""

from __future__ import annotations

from proxy.tunnel import presence, queue, router, session


def clear() -> None:
    session.LOCAL.clear()
    presence._local.clear()
    presence._read_cache.clear()
    router._dispatched.clear()
    queue.WAITERS.clear()
    queue._local.clear()
    queue._maybe_waiting.clear()


def stop_keeper() -> None:
    """Cancel the task that republishes presence: its loop ends with the test, and the next test's
    first publish starts a new one."""
    keeper = presence._keeper
    if keeper is not None and not keeper.done() and not keeper.get_loop().is_closed():
        keeper.cancel()
