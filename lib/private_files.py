"""Files only the server's own user may read: the SQLite database and its companions.

SQLite creates a database file with the process's default mode (0644 under the usual umask: every
local user could read the API key hashes, the audit log, the usage), and gives its -wal, -shm and
-journal files the database file's own mode. So the database is created empty at 0600 before SQLite
first opens it, and an existing one (and its companions) is set to 0600 at every start.
"""

from __future__ import annotations

import os
from pathlib import Path

SQLITE_COMPANIONS = ("-wal", "-shm", "-journal")


def make_private(path: Path, *, create: bool = False) -> None:
    """chmod 600 `path` if it exists; with `create`, first create it, empty and 0600, if it does not."""
    if create:
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        except FileExistsError:
            pass
    try:
        path.chmod(0o600)
    except FileNotFoundError:
        pass


def private_sqlite(name: str) -> None:
    """Make a SQLite database file (settings.DATABASES NAME) and its companions 0600.

    An in-memory or URI name, or one whose folder does not exist (SQLite will say so), is left alone."""
    if not name or name.startswith((":", "file:")):
        return
    path = Path(name)
    if not path.parent.is_dir():
        return
    make_private(path, create=True)
    for suffix in SQLITE_COMPANIONS:
        make_private(path.with_name(path.name + suffix))
