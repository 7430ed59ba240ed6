"""Stopping a test's child process together with everything it started.

The child runs in a session (and so a process group) of its own (`start_new_session=True`). Some
children are wrappers: `llama-cpp-server` starts the real `llama-server` and does not stop it when
it is stopped itself. So the whole group gets the signal, and the stop waits until the group is
empty — its port free — before it returns, with SIGKILL for whatever is still there at the deadline.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a member we may not signal is still a member
        return True
    return True


def signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def wait_group(proc: subprocess.Popen, deadline: float) -> bool:
    """Reap `proc`, then wait for the rest of its group to go; True if it went before `deadline`."""
    while time.monotonic() < deadline:
        proc.poll()  # a leader that exited but was not reaped still counts as a member
        if proc.returncode is not None and not group_alive(proc.pid):
            return True
        time.sleep(0.05)
    return False


def stop_group(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int | None:
    """Send `sig` to `proc`'s whole group, wait up to `timeout` seconds for all of it to exit, then
    SIGKILL what is left and wait for that too. Returns `proc`'s exit code."""
    signal_group(proc.pid, sig)
    if not wait_group(proc, time.monotonic() + timeout):
        signal_group(proc.pid, signal.SIGKILL)
        if not wait_group(proc, time.monotonic() + 10):
            raise RuntimeError(f"process group {proc.pid} ({proc.args!r}) did not exit after SIGKILL")
    return proc.returncode
