#!/usr/bin/env python3
"""Tokios developer entry point. Needs only Python ≥ 3.11.

    python3 dev.py run     set up a virtualenv, migrate, create a demo org/key/token, serve on :8000
                           (with a Celery worker and its beat beside it, for usage rollups and alerts)
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
import signal
import subprocess
import sys
import time
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
    server = [str(PY), "-m", "uvicorn", "tokios_site.asgi:application", "--host", host, "--port", port, *UVICORN_ARGS]
    if os.environ.get("TOKIOS_EMBEDDED_WORKER", "1") == "0":
        os.execv(str(PY), server)
    # The usage pages, statements and alerts are made by Celery's periodic tasks: one worker with its
    # beat inside, on the same broker as the server (embedded: files under TOKIOS_DATA_DIR), started
    # and stopped with it. Production runs a separate worker and beat instead (README, docs/billing.md).
    worker = [
        str(PY),
        "-m",
        "celery",
        "-A",
        "tokios_site",
        "--quiet",  # no banner
        "worker",
        "--beat",
        "--pool",
        "solo",
        "-l",
        "WARNING",
    ]
    sys.exit(supervise([server, worker]))


def supervise(commands: list[list[str]]) -> int:
    """Run `commands` side by side until one of them exits or this process is asked to stop (SIGINT,
    SIGTERM); then stop the others (SIGTERM, SIGKILL after 30 s) and return the first one's exit code."""
    stop_requested: list[int] = []

    def request_stop(signum: int, frame: object) -> None:
        stop_requested.append(signum)

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    # Each in its own process group, so that Ctrl-C reaches this process alone and every child is told
    # to stop exactly once (a second signal makes uvicorn skip its graceful shutdown and the usage
    # writer's last flush).
    children = [subprocess.Popen(command, cwd=ROOT, process_group=0) for command in commands]
    code = 0
    while not stop_requested:
        exited = [child for child in children if child.poll() is not None]
        if exited:
            code = exited[0].returncode
            name = exited[0].args[2]  # every command is `python -m <module> …`
            print(f"{name} exited ({code}); stopping the rest.", file=sys.stderr, flush=True)
            break
        time.sleep(0.2)
    for child in children:
        if child.poll() is None:
            child.terminate()
    deadline = time.monotonic() + 30
    for child in children:
        try:
            child.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
    return code


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
