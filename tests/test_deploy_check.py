"""`manage.py check --deploy` is clean with the settings production runs: a database URL, a secret
key, HTTPS on, DEBUG off. Run as a real process, with the production settings module (the tests'
own settings turn HTTPS off)."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def check_deploy(tmp_path: Path, **overrides: str) -> subprocess.CompletedProcess[str]:
    # Nothing of this process's environment that production would not have: no test database, and no
    # DJANGO_ALLOW_ASYNC_UNSAFE (the browser tests set it here; the check rightly refuses it).
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TOKIOS_", "PYTEST", "SQLITE_", "DJANGO_"))}
    for name in ("DATABASE_URL", "REDIS_URL", "SECRET_KEY", "DEBUG", "ALLOWED_HOSTS", "EMAIL_BACKEND"):
        env.pop(name, None)
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "tokios_site.settings",
            # The check does not connect: no server is needed behind this URL.
            "DATABASE_URL": "postgres://tokios@db.invalid:5432/tokios",
            "SECRET_KEY": secrets.token_urlsafe(50),
            "TOKIOS_HTTPS": "true",
            "DEBUG": "false",
            "ALLOWED_HOSTS": "tokios.example",
            "TOKIOS_DATA_DIR": str(tmp_path / "data"),
            **overrides,
        }
    )
    return subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_check_deploy_finds_nothing_with_production_settings(tmp_path: Path) -> None:
    result = check_deploy(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues (0 silenced)." in result.stdout


@pytest.mark.parametrize(
    ("overrides", "warning"),
    [({"TOKIOS_HTTPS": "false"}, "security.W004"), ({"DEBUG": "true"}, "security.W018")],
)
def test_check_deploy_would_catch_a_weakened_setting(tmp_path: Path, overrides: dict[str, str], warning: str) -> None:
    # The check above can fail: the same run with one setting weakened reports it.
    result = check_deploy(tmp_path, **overrides)
    assert result.returncode != 0 and warning in result.stdout + result.stderr
