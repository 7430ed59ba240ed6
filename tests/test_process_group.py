"""tests/process_group.py: a test's child is stopped with everything it started, as the real-model
tests (llama-cpp-server, a wrapper around llama-server) and `dev.py demo` need."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.e2e.conftest import Proc, base_env
from tests.process_group import group_alive, stop_group

# A wrapper like llama-cpp-server: starts a child, writes its pid, and exits on SIGTERM without
# passing it on (the child would be left running).
WRAPPER = """
import signal, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", {child!r}])
open(sys.argv[1], "w").write(str(child.pid))
signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
while True:
    time.sleep(0.1)
"""
STUBBORN = "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nwhile True: time.sleep(0.1)"
POLITE = "import time\nwhile True: time.sleep(0.1)"


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # Reaped by init once its parent is gone; a zombie would still answer.
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def start(tmp_path: Path, child: str) -> tuple[subprocess.Popen, int]:
    pid_file = tmp_path / "child.pid"
    proc = subprocess.Popen([sys.executable, "-c", WRAPPER.format(child=child), str(pid_file)], start_new_session=True)
    deadline = time.monotonic() + 10
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline, "the wrapper did not start its child"
        time.sleep(0.05)
    return proc, int(pid_file.read_text())


def test_stopping_a_wrapper_also_stops_the_process_it_started(tmp_path):
    proc, child = start(tmp_path, POLITE)
    assert alive(child)
    assert stop_group(proc, timeout=5) == 0
    assert not alive(child) and not group_alive(proc.pid)


def test_a_child_that_ignores_sigterm_is_killed_at_the_deadline(tmp_path):
    proc, child = start(tmp_path, STUBBORN)
    started = time.monotonic()
    stop_group(proc, timeout=0.5)
    assert not alive(child) and not group_alive(proc.pid)
    assert time.monotonic() - started < 5


def test_a_group_whose_leader_already_exited_is_still_stopped(tmp_path):
    proc, child = start(tmp_path, POLITE)
    os.kill(proc.pid, signal.SIGTERM)  # the leader alone, as a crash would leave it
    proc.wait(5)
    assert alive(child)
    stop_group(proc, timeout=5)
    assert not alive(child)


def test_the_e2e_process_fixture_stops_its_whole_group(tmp_path):
    pid_file = tmp_path / "child.pid"
    proc = Proc("wrapper", [sys.executable, "-c", WRAPPER.format(child=POLITE), str(pid_file)], base_env())
    deadline = time.monotonic() + 10
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    child = int(pid_file.read_text())
    proc.stop(timeout=5)
    assert not alive(child)
