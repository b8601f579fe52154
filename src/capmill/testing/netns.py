"""Network isolation for tests of URL fetching (test helpers, not used by capmill itself).

- `ConnectionLog` records every socket connection a process opens (through Python's audit
  hooks), so a test can assert that a refused URL opened none.
- `isolated(cmd)` runs a command in a fresh network namespace (`unshare -n`, needs root) whose
  only interface is loopback: even a broken address check could not reach another machine.
  `bring_loopback_up()` is the first thing the command does there.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
from typing import Any

_LOGS: list[ConnectionLog] = []
_LOCK = threading.Lock()
_HOOKED = False


def _hook(event: str, args: tuple) -> None:
    if event == "socket.connect" and _LOGS:
        address = args[1]
        with _LOCK:
            for log in _LOGS:
                log.addresses.append(address[0] if isinstance(address, tuple) else str(address))


class ConnectionLog:
    """`with ConnectionLog() as log: ...` → `log.addresses`: every host connected to, in order."""

    def __init__(self) -> None:
        self.addresses: list[str] = []

    def __enter__(self) -> ConnectionLog:
        global _HOOKED
        with _LOCK:
            if not _HOOKED:  # audit hooks cannot be removed: one for the process, logs come and go
                sys.addaudithook(_hook)
                _HOOKED = True
            _LOGS.append(self)
        return self

    def __exit__(self, *exc: Any) -> None:
        with _LOCK:
            _LOGS.remove(self)


def bring_loopback_up() -> None:
    """Set `lo` up in this network namespace (a new namespace starts with it down)."""
    import fcntl
    import socket
    import struct

    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        request = struct.pack("16sH", b"lo", 0)
        flags = struct.unpack("16sH", fcntl.ioctl(s, siocgifflags, request)[:18])[1]
        fcntl.ioctl(s, siocsifflags, struct.pack("16sH", b"lo", flags | iff_up))


def unshare_refusal() -> str | None:
    """Why a network namespace cannot be made here, or None when it can."""
    if not sys.platform.startswith("linux"):
        return "network namespaces are Linux only"
    if shutil.which("unshare") is None:
        return "the unshare command (util-linux) is not installed"
    try:
        probe = subprocess.run(["unshare", "-n", "true"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unshare -n failed: {e}"
    if probe.returncode != 0:
        return f"unshare -n is not permitted here (needs root or user namespaces): {probe.stderr.strip()}"
    return None


def isolated(cmd: list[str], timeout: float = 300, **kwargs: Any) -> subprocess.CompletedProcess:
    """Run `cmd` in a new network namespace with nothing but a loopback interface."""
    return subprocess.run(["unshare", "-n", "--", *cmd], capture_output=True, text=True, timeout=timeout, **kwargs)
