"""Ends a private Ray cluster's processes when the run that started it dies.

A run that starts its own cluster owns that cluster's lifetime. Ray's own fate sharing ends the
GCS and the raylet with their parent, but worker processes notice only when a connection times
out, so a SIGKILLed driver used to leave workers (which may still be writing) for a minute or
more. So before the cluster starts, the driver marks its environment with a token, which the
cluster's processes inherit (GCS, raylet, and the workers the raylet spawns), and starts this
watcher with a pipe as its standard input. The raylet's agents (dashboard and runtime-env
agents) are started with an environment of their own, without the token: they are found as the
children of marked processes.

- the driver dies (any signal): the kernel closes the pipe, the watcher reads end-of-file and
  SIGKILLs every process whose environment carries the token, at once;
- the driver ends normally: it writes `done` after `ray.shutdown()`; the watcher gives the
  processes a short grace period to exit by themselves, then ends the stragglers the same way.

Linux only (it reads /proc); elsewhere the watcher is not started.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

MARK = "CAPMILL_RAY_CLUSTER"


def marked(token: str, exclude: set[int]) -> list[int]:
    """Processes of this user whose environment holds MARK=token."""
    needle = f"{MARK}={token}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in exclude:
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if needle in f.read().split(b"\0"):
                    found.append(int(entry))
        except OSError:
            continue
    return found


def parents() -> dict[int, int]:
    """pid → parent pid of every process."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # "pid (comm) state ppid …": comm may hold spaces and parentheses, so split after the last ")".
        fields = stat[stat.rfind(b")") + 2:].split()
        if len(fields) > 1:
            found[int(entry)] = int(fields[1])
    return found


def cluster(token: str, exclude: set[int]) -> set[int]:
    """The marked processes and every descendant of theirs."""
    found = set(marked(token, exclude))
    if not found:
        return found
    tree = parents()
    grew = True
    while grew:
        children = {pid for pid, parent in tree.items() if parent in found and pid not in found and pid not in exclude}
        found |= children
        grew = bool(children)
    return found


def reap(token: str, exclude: set[int], rounds: int = 4) -> int:
    """SIGKILL the cluster's processes; a few rounds catch processes started during the first.
    What one round found is killed again in the next ones: a child whose parent was killed is no
    longer anyone's descendant."""
    seen: set[int] = set()
    for _ in range(rounds):
        found = cluster(token, exclude)
        if not found and not seen:
            break
        seen |= found
        for pid in seen:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.1)
    return len(seen)


class Reaper:
    """The driver's side: marks the environment, starts the watcher, says when it is done."""

    def __init__(self) -> None:
        self.token = uuid.uuid4().hex
        self.proc: subprocess.Popen | None = None
        if not sys.platform.startswith("linux"):
            return
        env = {k: v for k, v in os.environ.items() if k != MARK}
        self.proc = subprocess.Popen([sys.executable, "-m", "capmill.executors.reaper", self.token, str(os.getpid())],
                                     stdin=subprocess.PIPE, env=env, start_new_session=True,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def mark(self) -> None:
        """Processes started from now on (the cluster's) carry the token."""
        os.environ[MARK] = self.token

    def unmark(self) -> None:
        os.environ.pop(MARK, None)

    def close(self) -> None:
        """The cluster was shut down: let the watcher end what is left of it, then exit."""
        self.unmark()
        if self.proc is None or self.proc.stdin is None:
            return
        try:
            self.proc.stdin.write(b"done\n")
            self.proc.stdin.close()
        except OSError:
            pass
        self.proc = None


def main(argv: list[str]) -> None:
    token, driver = argv[0], int(argv[1])
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C of the driver's terminal is the driver's
    exclude = {os.getpid(), driver}
    line = sys.stdin.buffer.readline()
    if line.strip() == b"done":
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline and cluster(token, exclude):
            time.sleep(0.2)
    reap(token, exclude)


if __name__ == "__main__":
    main(sys.argv[1:])
