"""What the connector tells the real server about its upstream (hello.surfaces and hello.models,
kept in presence), and `--check`, against the real Tokios server in this process
(tests/connector/server.py) and the fake upstream process."""

from __future__ import annotations

import asyncio
import io
import os
import sys

import pytest
from asgiref.sync import sync_to_async

from deployments.actions import revoke_connector_token
from tests.connector.conftest import StartConnector, Upstream
from tests.connector.server import Tokios
from tests.fakes.process import REPO_ROOT, free_port
from tokios_connector.check import EXIT_OK, EXIT_PROBLEM, run_check
from tokios_connector.config import Config

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60), pytest.mark.django_db(transaction=True)]


async def test_the_hello_tells_the_server_what_the_upstream_speaks_and_serves(
    tokios: Tokios, connect: StartConnector, upstream: Upstream, deployment
) -> None:
    await connect()

    info = await tokios.wait_online(deployment.id)

    # The fake has chat completions and llama.cpp's /tokenize, and serves one model.
    assert (info.surfaces, info.models) == (["chat", "tokenize"], ["fake-model"])
    assert upstream.stats()["started"] == 0, "the probe is not model traffic"


async def test_without_probing_the_hello_announces_nothing(tokios: Tokios, connect: StartConnector, deployment) -> None:
    await connect(probe=False)

    info = await tokios.wait_online(deployment.id)

    assert (info.surfaces, info.models) == (None, None)


def check_config(tokios: Tokios, upstream: str, token: str) -> Config:
    return Config(server_url=tokios.ws_url, token=token, upstream=upstream, connect_timeout=5)


async def test_check_reports_the_upstream_and_that_the_server_accepts_the_token(
    tokios: Tokios, upstream: Upstream, deployment, connector_token
) -> None:
    out = io.StringIO()

    code = await run_check(check_config(tokios, upstream.base, connector_token.secret), out)

    report = out.getvalue()
    assert code == EXIT_OK, report
    assert "speaks natively: chat, tokenize" in report
    assert "models (1): fake-model" in report
    assert "accepts the token (connector conn_" in report and f"deployment {deployment.name})" in report
    assert "all good" in report
    assert connector_token.secret not in report
    await tokios.wait_offline(deployment.id)  # it served nothing and did not stay
    assert upstream.stats()["started"] == 0


async def test_check_fails_on_a_token_the_server_does_not_know(tokios: Tokios, upstream: Upstream, deployment) -> None:
    out = io.StringIO()

    code = await run_check(check_config(tokios, upstream.base, "ct-" + "0" * 40), out)

    assert code == EXIT_PROBLEM
    assert "does not know this connector token (close 4001)" in out.getvalue()
    assert "not ready" in out.getvalue()


async def test_check_fails_on_a_revoked_token(tokios: Tokios, upstream: Upstream, connector_token) -> None:
    await sync_to_async(revoke_connector_token)(token=connector_token)
    out = io.StringIO()

    code = await run_check(check_config(tokios, upstream.base, connector_token.secret), out)

    assert code == EXIT_PROBLEM
    assert "close 400" in out.getvalue()  # 4001 or 4003: either way the token is refused
    assert "accepts the token" not in out.getvalue()


async def test_check_fails_when_the_model_server_does_not_answer_but_still_checks_the_token(
    tokios: Tokios, connector_token
) -> None:
    out = io.StringIO()

    code = await run_check(check_config(tokios, f"http://127.0.0.1:{free_port()}/v1", connector_token.secret), out)

    assert code == EXIT_PROBLEM
    assert "no answer (is the model server running?" in out.getvalue()
    assert "accepts the token" in out.getvalue()


async def test_check_fails_when_the_server_cannot_be_reached(upstream: Upstream) -> None:
    out = io.StringIO()
    config = Config(server_url=f"ws://127.0.0.1:{free_port()}/v1/connector", token="t", upstream=upstream.base)

    assert await run_check(config, out) == EXIT_PROBLEM
    assert "cannot connect" in out.getvalue()


async def test_python_m_tokios_connector_check_exits_0_when_ready(
    tokios: Tokios, upstream: Upstream, deployment, connector_token
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKIOS_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tokios_connector",
        "--check",
        "--server",
        tokios.url,
        "--upstream",
        upstream.base,
        cwd=REPO_ROOT,
        env={**env, "TOKIOS_CONNECTOR_TOKEN": connector_token.secret},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(proc.communicate(), 30)

    assert proc.returncode == 0, stdout.decode() + stderr.decode()
    assert "accepts the token" in stdout.decode()
    assert "fake-model" in stdout.decode()
