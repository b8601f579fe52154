"""The watcher that ends a private cluster's processes: marked processes, and the children they
started with an environment of their own (as the raylet starts its agents), are all killed."""

import os
import subprocess
import sys
import time
import uuid

import pytest

from capmill.executors.reaper import MARK, cluster, reap

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

# A "raylet": marked, it starts an "agent" whose environment lacks the mark, prints its pid, waits.
PARENT = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], env={})
print(child.pid, flush=True)
time.sleep(60)
"""


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie is dead, only not yet reaped
    except OSError:
        return False


def test_marked_processes_and_their_unmarked_children_are_killed():
    token = uuid.uuid4().hex
    parent = subprocess.Popen([sys.executable, "-c", PARENT], env={**os.environ, MARK: token},
                              stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    try:
        assert cluster(token, {os.getpid()}) == {parent.pid, child}
        assert reap(token, {os.getpid()}) == 2
        parent.wait(timeout=5)
        deadline = time.time() + 5
        while alive(child) and time.time() < deadline:
            time.sleep(0.05)
        assert not alive(child)
        assert cluster(token, {os.getpid()}) == set()
    finally:
        for pid in (parent.pid, child):
            try:
                os.kill(pid, 9)
            except OSError:
                pass
