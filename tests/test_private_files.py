"""The embedded default's files are the server user's alone: the data folder 0700 when Tokios creates
it, the SQLite database and its -wal/-shm files 0600 (lib/private_files.py, tokios_site/settings.py)."""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from lib.private_files import private_sqlite

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def manage(data_dir: Path, *args: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TOKIOS_", "PYTEST", "SQLITE_", "DJANGO_"))}
    env.pop("DATABASE_URL", None)
    env.pop("REDIS_URL", None)
    env.update({"DJANGO_SETTINGS_MODULE": "tokios_site.settings", "TOKIOS_DATA_DIR": str(data_dir)})
    subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, check=True, capture_output=True, timeout=300
    )


def test_a_fresh_install_keeps_its_database_and_secret_key_private(tmp_path: Path) -> None:
    data = tmp_path / "data"
    manage(data, "migrate", "--noinput", "-v0")
    assert mode(data) == 0o700
    database = data / "tokios.sqlite3"
    assert database.stat().st_size > 0  # migrated: the file SQLite used is the one made 0600
    assert mode(database) == 0o600 and mode(data / "secret_key") == 0o600
    # SQLite gives its write-ahead log and shared memory the database's own mode.
    connection = sqlite3.connect(database)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("CREATE TABLE probe (x)")
    companions = [p for p in data.iterdir() if p.name.startswith("tokios.sqlite3-")]
    assert {p.name for p in companions} >= {"tokios.sqlite3-wal", "tokios.sqlite3-shm"}
    assert all(mode(p) == 0o600 for p in companions)
    connection.close()


def test_an_existing_database_readable_by_others_is_made_private_at_start(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    files = [data / name for name in ("tokios.sqlite3", "tokios.sqlite3-wal", "tokios.sqlite3-shm")]
    for path in files:
        path.touch(mode=0o644)
        path.chmod(0o644)
    manage(data, "check")
    assert [mode(p) for p in files] == [0o600, 0o600, 0o600]


def test_private_sqlite_leaves_memory_and_missing_folders_alone(tmp_path: Path) -> None:
    private_sqlite(":memory:")
    private_sqlite("file:memdb1?mode=memory&cache=shared")
    private_sqlite(str(tmp_path / "missing" / "db.sqlite3"))
    assert not (tmp_path / "missing").exists()
    private_sqlite(str(tmp_path / "db.sqlite3"))
    assert mode(tmp_path / "db.sqlite3") == 0o600
