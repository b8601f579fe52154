"""The run lock: one live holder, dead holders taken over, another host judged by its heartbeat."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time

import pytest

from capmill.commit.lock import Lease, RunLock, _boot_id, _pid_start
from capmill.errors import OutputLockedError


def plant(out, **record):
    """A lock file as another run would have left it."""
    base = {"holder": "someone", "host": socket.gethostname(), "boot_id": _boot_id(), "pid": os.getpid(),
            "pid_start": _pid_start(os.getpid()), "started": "2030-01-01T00:00:00+00:00", "mode": "exclusive",
            "heartbeat_s": 10, "command": "capmill run other.yaml"}
    path = out / "_lock.json"
    path.write_text(json.dumps({**base, **record}))
    return path


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_live_holder_is_refused_naming_it(tmp_path):
    plant(tmp_path)  # this very process: alive
    with pytest.raises(OutputLockedError, match=rf"in use by another run: pid {os.getpid()} on host .*capmill run other.yaml"):
        RunLock(str(tmp_path)).acquire()
    assert json.loads((tmp_path / "_lock.json").read_text())["holder"] == "someone"


def test_a_dead_holder_on_this_host_is_taken_over_with_a_message(tmp_path, caplog):
    plant(tmp_path, pid=dead_pid(), pid_start=None)
    lock = RunLock(str(tmp_path))
    with caplog.at_level(logging.WARNING, logger="capmill.lock"):
        dead = lock.acquire()
    try:
        assert dead is not None and "process is gone" in dead.why
        assert "taking over the lock" in caplog.text and "capmill run other.yaml" in caplog.text
        assert json.loads((tmp_path / "_lock.json").read_text())["holder"] == lock.token
        assert not [p for p in tmp_path.iterdir() if p.name != "_lock.json"]  # nothing left aside
    finally:
        lock.release()
    assert not (tmp_path / "_lock.json").exists()


def test_a_reused_pid_does_not_keep_a_dead_holder_alive(tmp_path):
    # Our own pid, but started at another time: the holder was another process.
    plant(tmp_path, pid_start="1")
    lock = RunLock(str(tmp_path))
    assert lock.acquire() is not None
    lock.release()


def test_another_host_is_judged_by_the_age_of_its_heartbeat(tmp_path):
    path = plant(tmp_path, host="node-17.cluster", boot_id="x", pid=1)
    with pytest.raises(OutputLockedError, match="node-17.cluster.*heartbeat is 0s old"):
        RunLock(str(tmp_path), stale_after_s=60).acquire()
    old = time.time() - 600
    os.utime(path, (old, old))
    lock = RunLock(str(tmp_path), stale_after_s=60)
    dead = lock.acquire()
    assert dead is not None and "stale" in dead.why
    lock.release()


def test_heartbeat_refreshes_and_a_lost_lock_is_noticed(tmp_path):
    lock = RunLock(str(tmp_path), heartbeat_s=0.05)
    lock.acquire()
    path = tmp_path / "_lock.json"
    first = path.stat().st_mtime_ns
    old = time.time() - 100
    os.utime(path, (old, old))
    time.sleep(0.3)
    assert path.stat().st_mtime_ns >= first and lock.still_held() and lock.lost is None
    # Another run judged this one dead and took the lock over.
    path.unlink()
    other = Lease(str(path))
    assert other.acquire() is None
    time.sleep(0.3)
    assert not lock.still_held() and lock.lost and "taken away" in lock.lost
    lock.release()  # gives back nothing that is not its own
    assert json.loads(path.read_text())["holder"] == other.token
    other.release()


def test_two_contenders_for_a_dead_lock_end_with_one_holder(tmp_path):
    plant(tmp_path, pid=dead_pid(), pid_start=None)
    a, b = RunLock(str(tmp_path)), RunLock(str(tmp_path))
    a.acquire()
    with pytest.raises(OutputLockedError):
        b.acquire()
    assert a.still_held()
    a.release()
