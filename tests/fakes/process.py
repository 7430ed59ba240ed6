"""Start the fake upstream (TEST DOUBLE, see fake_upstream.py) as a real process on a free port."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def running_fake_upstream(startup_timeout: float = 15.0) -> Iterator[str]:
    """Yield the fake's origin, e.g. ``http://127.0.0.1:41234`` (its OpenAI base is origin + /v1)."""
    port = free_port()
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.fakes.fake_upstream", "--port", str(port)],
            cwd=REPO_ROOT,
            stdout=log,
            stderr=log,
        )
        origin = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + startup_timeout
            while True:
                try:
                    httpx.get(f"{origin}/_fake/stats", timeout=1).raise_for_status()
                    break
                except httpx.HTTPError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        log.seek(0)
                        raise RuntimeError(
                            f"fake upstream did not start:\n{log.read().decode(errors='replace')}"
                        ) from None
                    time.sleep(0.05)
            yield origin
        finally:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
