"""`python3 dev.py run`, the README's first command, as a new user runs it: on the embedded default
(SQLite, in-memory layer, files for Celery's broker), traffic through a connector shows up in the
usage rollups with nothing else started, and Ctrl-C stops everything it started.

The model is the fake upstream (tests/fakes/fake_upstream.py), a labelled test double.
"""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import sys
import time
from pathlib import Path

import httpx
import pytest

from .conftest import Proc, base_env, free_port, wait_http

pytestmark = pytest.mark.e2e

EMBEDDED_OFF = ("DATABASE_URL", "REDIS_URL", "SQLITE_PATH", "CELERY_BROKER_URL", "DJANGO_SETTINGS_MODULE")


def _processes_with(marker: str) -> list[int]:
    """Pids of the processes whose environment holds `marker` (the test's own data folder)."""
    found = []
    needle = marker.encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def _rolled_up_requests(database: Path) -> int:
    with sqlite3.connect(database) as connection:
        (total,) = connection.execute(
            "SELECT COALESCE(SUM(requests), 0) FROM billing_usagerollup WHERE period = 'hour'"
        ).fetchone()
    return int(total)


def _csrf(html: str) -> str:
    found = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', html)
    assert found, html[:2000]
    return found.group(1)


def _sign_in_with_link(link: str, port: int) -> None:
    base = f"http://127.0.0.1:{port}"
    password = "a long passphrase for the demo 7"
    with httpx.Client(base_url=base, follow_redirects=True, timeout=10) as client:
        form = client.get(link)  # the token moves into the session; the form is at a token-free address
        assert form.status_code == 200, form.text[:2000]
        chosen = client.post(
            str(form.url),
            data={"csrfmiddlewaretoken": _csrf(form.text), "new_password1": password, "new_password2": password},
            headers={"referer": str(form.url)},
        )
        assert chosen.status_code == 200, chosen.text[:2000]
        login = client.get("/login/")
        signed_in = client.post(
            "/login/",
            data={"csrfmiddlewaretoken": _csrf(login.text), "username": "admin@demo.local", "password": password},
            headers={"referer": f"{base}/login/"},
        )
        assert signed_in.status_code == 200 and "/login/" not in str(signed_in.url), signed_in.text[:2000]
        usage = client.get("/usage/")
        assert usage.status_code == 200
        total = re.search(r'<th scope="row">Total</th><td class="num">([\d,]+)</td>', usage.text)
        assert total and total.group(1) == "5", usage.text[-3000:]


def test_dev_run_rolls_usage_up_by_itself_and_stops_everything_on_ctrl_c(tmp_path, fake_upstream):
    port = free_port()
    data_dir = tmp_path / "tokios-data"
    env = {k: v for k, v in base_env().items() if k not in EMBEDDED_OFF}
    env.update(
        TOKIOS_DATA_DIR=str(data_dir),
        TOKIOS_PORT=str(port),
        TOKIOS_VENV=sys.prefix,  # the test's own virtualenv: nothing to install
        TOKIOS_ROLLUP_INTERVAL="2",  # the default is a minute; the schedule itself is what is tested
    )
    run = Proc("dev-run", [sys.executable, "dev.py", "run"], env)
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", timeout=120, proc=run)
        output = run.output()
        key = re.search(r"API key:\s+(sk-tokios-\S+)", output)
        token = re.search(r"TOKIOS_CONNECTOR_TOKEN=(\S+)", output)
        assert key and token, output
        connector = Proc(
            "dev-run-connector",
            [
                sys.executable,
                "-m",
                "tokios_connector",
                "--server",
                f"http://127.0.0.1:{port}",
                "--upstream",
                fake_upstream.base,
            ],
            {**base_env(), "TOKIOS_CONNECTOR_TOKEN": token.group(1)},
        )
        try:
            connector.wait_for_output("connected to", timeout=30)
            headers = {"Authorization": f"Bearer {key.group(1)}"}
            body = {"model": "gemma-tunnel", "messages": [{"role": "user", "content": "Hi"}]}
            for _ in range(5):
                response = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body, headers=headers)
                assert response.status_code == 200, response.text
        finally:
            connector.stop()

        database = data_dir / "tokios.sqlite3"
        deadline = time.monotonic() + 60
        while _rolled_up_requests(database) < 5 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert _rolled_up_requests(database) == 5, run.output()[-4000:]

        # As the new user: the set-password link dev.py printed, sign in, and the usage page's Total row.
        link = re.search(r"(http://127\.0\.0\.1:\d+/password/reset/\S+)", output)
        assert link, output
        _sign_in_with_link(link.group(1), port)

        marker = f"TOKIOS_DATA_DIR={data_dir}"
        assert len(_processes_with(marker)) >= 3  # dev.py, uvicorn and the Celery worker
        run.popen.send_signal(signal.SIGINT)  # Ctrl-C
        assert run.popen.wait(40) == 0, run.output()[-4000:]
        deadline = time.monotonic() + 10
        while _processes_with(marker) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _processes_with(marker) == [], "dev.py run left processes behind"
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
    finally:
        run.kill()
