#!/usr/bin/env python3
"""Tokios developer entry point. Needs only Python ≥ 3.11.

    python3 dev.py run     set up a virtualenv, migrate, create a demo org/key/token, serve on :8000
    python3 dev.py test    set up a virtualenv and run the whole test suite
    python3 dev.py demo    run the real Gemma 3 270M through the tunnel (builds llama.cpp once, ~10 min)

Everything runs on the embedded default (SQLite, in-memory channel layer) unless DATABASE_URL /
REDIS_URL are set. Tests that need PostgreSQL or Redis are skipped without them and named in the
summary; with CI=true a missing service is a failure.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = Path(os.environ.get("TOKIOS_VENV", ROOT / ".venv"))
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PY = BIN / "python"
# uvicorn as Tokios runs it: uvicorn's httptools protocol with the bounds it lacks (a request's head
# in bytes and in time, a body in time: lib/contract.py BoundedHttpToolsProtocol, docs/security.md).
UVICORN_ARGS = ["--http", "lib.contract:BoundedHttpToolsProtocol", "--no-access-log"]


def sh(*args: str, **kwargs) -> None:
    result = subprocess.run(args, cwd=ROOT, **kwargs)
    if result.returncode != 0:
        sys.exit(result.returncode)


def ensure_venv(*requirement_files: str) -> None:
    if sys.version_info < (3, 11):  # noqa: UP036 — dev.py must explain itself on an older Python
        sys.exit(f"Tokios needs Python 3.11 or newer; this is {sys.version.split()[0]}.")
    if not PY.exists():
        print(f"Creating a virtualenv in {VENV} …", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    for name in requirement_files:
        path = ROOT / name
        digest = hashlib.sha256(b"".join((ROOT / f).read_bytes() for f in _with_includes(path))).hexdigest()
        stamp = VENV / f".installed-{path.name}"
        if stamp.exists() and stamp.read_text() == digest:
            continue
        print(f"Installing {name} …", flush=True)
        sh(str(PY), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-r", str(path))
        stamp.write_text(digest)


def _with_includes(path: Path) -> list[Path]:
    files = [path]
    for line in path.read_text().splitlines():
        if line.startswith("-r "):
            files += _with_includes(path.parent / line[3:].strip())
    return files


def manage(*args: str) -> None:
    sh(str(PY), "manage.py", *args)


def run() -> None:
    ensure_venv("requirements.txt")
    manage("migrate", "--noinput", "-v0")
    host = os.environ.get("TOKIOS_HOST", "127.0.0.1")
    port = os.environ.get("TOKIOS_PORT", "8000")
    manage("demo_setup", "--server", f"http://{host}:{port}")
    print(f"Serving Tokios on http://{host}:{port} (Ctrl-C to stop) …", flush=True)
    os.execv(
        str(PY),
        [str(PY), "-m", "uvicorn", "tokios_site.asgi:application", "--host", host, "--port", port, *UVICORN_ARGS],
    )


def test(extra: list[str]) -> None:
    ensure_venv("requirements-dev.txt")
    missing = [name for name in ("DATABASE_URL", "REDIS_URL") if not os.environ.get(name)]
    if missing:
        print(
            f"Note: {', '.join(missing)} not set — tests that need PostgreSQL/Redis will be skipped "
            "(listed at the end). Set them to run everything.",
            flush=True,
        )
    env = {**os.environ, "TOKIOS_HTTPS": "0"}
    result = subprocess.run([str(PY), "-m", "pytest", *extra], cwd=ROOT, env=env)
    sys.exit(result.returncode)


def demo() -> None:
    ensure_venv("requirements-dev.txt", "requirements-gemma.txt")
    sh(str(PY), "-m", "tests.gemma_demo")


def main() -> None:
    command = sys.argv[1] if len(sys.argv) > 1 else ""
    if command == "run":
        run()
    elif command == "test":
        test(sys.argv[2:])
    elif command == "demo":
        demo()
    else:
        print(__doc__)
        sys.exit(0 if command in ("", "-h", "--help") else 2)


if __name__ == "__main__":
    if shutil.which("git") is None and not (ROOT / "manage.py").exists():
        sys.exit("Run dev.py from a checkout of Tokios.")
    main()
