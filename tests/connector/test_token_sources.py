"""Where the connector takes its token from: the environment or a file, so that it never has to
stand on the command line, where `ps` shows it to every user of the machine."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from tests.connector.conftest import TOKEN, Upstream
from tests.connector.tunnel import FakeTokios
from tests.fakes.process import REPO_ROOT
from tokios_connector.cli import parse_config

BASE = ["--server", "https://tokios.example", "--upstream", "http://127.0.0.1:8080/v1"]


def token_file(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    path = tmp_path / "token"
    path.write_text(text)
    path.chmod(mode)
    return path


def test_the_token_comes_from_the_environment_without_a_warning() -> None:
    config, _, warnings = parse_config(BASE, {"TOKIOS_CONNECTOR_TOKEN": TOKEN})
    assert config.token == TOKEN
    assert warnings == []


def test_the_token_comes_from_a_file_given_on_the_command_line(tmp_path: Path) -> None:
    path = token_file(tmp_path, f"  {TOKEN}\n")
    config, _, warnings = parse_config([*BASE, "--token-file", str(path)], {})
    assert config.token == TOKEN
    assert warnings == []


def test_the_token_file_may_be_named_in_the_environment(tmp_path: Path) -> None:
    path = token_file(tmp_path, TOKEN)
    config, _, _ = parse_config(BASE, {"TOKIOS_CONNECTOR_TOKEN_FILE": str(path)})
    assert config.token == TOKEN


def test_a_token_on_the_command_line_still_works_but_warns() -> None:
    config, _, warnings = parse_config([*BASE, "--token", TOKEN], {})
    assert config.token == TOKEN
    assert len(warnings) == 1 and "process list" in warnings[0] and TOKEN not in warnings[0]


def test_a_token_file_others_can_read_works_but_warns(tmp_path: Path) -> None:
    path = token_file(tmp_path, TOKEN, mode=0o644)
    config, _, warnings = parse_config([*BASE, "--token-file", str(path)], {})
    assert config.token == TOKEN
    assert len(warnings) == 1 and "chmod 600" in warnings[0]


@pytest.mark.parametrize(
    ("extra", "env", "message"),
    [
        ([], {}, "a connector token is required: set TOKIOS_CONNECTOR_TOKEN or pass --token-file FILE"),
        (["--token", "x", "--token-file", "/nonexistent"], {}, "not allowed with argument"),
        (["--token-file", "/nonexistent/token"], {}, "--token-file /nonexistent/token cannot be read"),
        (
            [],
            {"TOKIOS_CONNECTOR_TOKEN_FILE": "/nonexistent/t"},
            "TOKIOS_CONNECTOR_TOKEN_FILE /nonexistent/t cannot be read",
        ),
    ],
)
def test_a_missing_or_doubled_token_exits_2_with_a_message(
    extra: list[str], env: dict[str, str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        parse_config([*BASE, *extra], env)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(("text", "problem"), [("", "is empty"), ("\n\n", "is empty"), ("x" * 5000, "is over 4096")])
def test_an_empty_or_oversized_token_file_is_refused_without_echoing_it(
    tmp_path: Path, text: str, problem: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = token_file(tmp_path, text)
    with pytest.raises(SystemExit) as exited:
        parse_config([*BASE, "--token-file", str(path)], {})
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert f"--token-file {path} {problem}" in err and "xxxx" not in err


@pytest.mark.asyncio
@pytest.mark.timeout(30)
async def test_the_real_connector_authenticates_with_a_token_file(
    tunnel: FakeTokios, upstream: Upstream, tmp_path: Path
) -> None:
    path = token_file(tmp_path, TOKEN + "\n")
    clean_env = {k: v for k, v in os.environ.items() if not k.startswith("TOKIOS_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tokios_connector",
        "--server",
        tunnel.http_url,
        "--token-file",
        str(path),
        "--upstream",
        upstream.base,
        cwd=REPO_ROOT,
        env=clean_env,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        peer = await tunnel.accept(timeout=10)
        assert peer.authorization == f"Bearer {TOKEN}"
        await peer.handshake()
    finally:
        proc.terminate()
        await proc.wait()
