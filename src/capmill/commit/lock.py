"""Leases on files (or objects) of the output directory: the run lock, cooperating runs' member
leases and per-shard claims.

    OUT/_lock.json   {holder, host, boot_id, pid, pid_start, started, command, mode, heartbeat_s}

A lease is a small JSON file created atomically (written under a temporary name, then
hard-linked to its final name, which fails if the name exists), so a reader never sees half a
record. Its heartbeat is the file's modification time, refreshed by the holder every
`heartbeat_s` through the file descriptor it keeps open: if the file was replaced meanwhile, the
refresh touches the old one and the holder learns that it lost the lease.

Whether a holder is alive:
- on this host (same host name and boot): its pid still runs and started when the lease says;
- on another host (NFS, a cluster file system): its pid means nothing here, so the heartbeat's
  age decides, read against the file system's own clock (a file touched just now), so clock skew
  between hosts does not count. Attribute caches are bypassed by opening the file (close-to-open).

A lease of a dead holder is broken by renaming it aside, checking that what was moved is the
record judged dead (a racing contender's fresh lease is put back), and creating a new one.

The run lock is an exclusive lease (`mode: exclusive`). Cooperating runs (several runs sharing one
output) each hold a member lease `OUT/_cooperators/TOKEN.json` (`mode: cooperate`) and claim each
shard with the same lease on `OUT/_claims/SHARD.json` (capmill.commit.claims). On an object store
(capmill.writers.store) a lease is an object created with `If-None-Match: *` and refreshed or
taken over with `If-Match` on its ETag; its heartbeat is the object's LastModified.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from capmill.errors import OutputLockedError
from capmill.outputdir import COOPERATORS_DIR, LOCK_FILE
from capmill.writers.base import TMP_MARK

if TYPE_CHECKING:
    from capmill.writers.store import Store

log = logging.getLogger("capmill.lock")


def _boot_id() -> str | None:
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return None


def _pid_start(pid: int) -> str | None:
    """When `pid` started (clock ticks since boot, from /proc), so a reused pid is told apart."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def pid_alive(pid: int, started: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, owned by another user
    return started is None or _pid_start(pid) in (None, started)


def _now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class Holder:
    """A lease's record as found on disk, and what is known about its holder."""

    record: dict[str, Any]
    mtime: float  # the heartbeat
    alive: bool
    why: str  # how `alive` was decided, for messages

    def describe(self) -> str:
        r = self.record
        what = f"pid {r.get('pid')} on host {r.get('host')}"
        if r.get("command"):
            what += f" ({r['command']})"
        return f"{what}, started {r.get('started')}; {self.why}"


class Lease:
    """One lease file: take it, keep its heartbeat, give it back."""

    def __init__(self, path: str, *, mode: str = "exclusive", heartbeat_s: float = 10.0,
                 stale_after_s: float = 120.0, command: str | None = None, store: Store | None = None):
        self.path = path
        # An object store (capmill.writers.store) keeps leases as objects written conditionally.
        self.store = store if store is not None and not store.local else None
        self._etag: str | None = None
        self.mode = mode
        self.heartbeat_s = heartbeat_s
        self.stale_after_s = stale_after_s
        self.token = uuid.uuid4().hex
        self.record = {
            "holder": self.token, "host": socket.gethostname(), "boot_id": _boot_id(), "pid": os.getpid(),
            "pid_start": _pid_start(os.getpid()), "started": _now_iso(), "mode": mode,
            "heartbeat_s": heartbeat_s, "command": command or " ".join(["capmill", *sys.argv[1:]])[:300],
        }
        self._fd: int | None = None
        self._stop = threading.Event()
        self._beater: threading.Thread | None = None
        self.lost: str | None = None  # set when the lease was found taken away

    # ---- looking at a lease ------------------------------------------------------------------

    def holder(self, write_probe: bool = True) -> Holder | None:
        """The current lease on `path`, or None when there is none. With `write_probe` off (a dry
        run writes nothing) another host's heartbeat is aged by this machine's clock."""
        self._probe = write_probe
        if self.store is not None:
            return self._obj_holder()
        try:
            with open(self.path, encoding="utf-8") as f:
                mtime = os.fstat(f.fileno()).st_mtime
                text = f.read()
        except FileNotFoundError:
            return None
        try:
            record = json.loads(text)
            if not isinstance(record, dict):
                raise ValueError("not a mapping")
        except ValueError:
            # Not written by a lease (they are never seen half-written): judge by its age alone.
            age = self._fs_now() - mtime
            return Holder({}, mtime, age < self.stale_after_s, f"unreadable lock file, {age:.0f}s old")
        return self._judge(record, mtime)

    def _judge(self, record: dict[str, Any], mtime: float) -> Holder:
        same_host = record.get("host") == socket.gethostname() and record.get("boot_id") == _boot_id()
        if same_host and isinstance(record.get("pid"), int):
            alive = pid_alive(record["pid"], record.get("pid_start"))
            return Holder(record, mtime, alive, "the process is running" if alive else "the process is gone")
        # Another host: give a slow heartbeat three beats of slack over our own threshold.
        stale_after = max(self.stale_after_s, 3 * float(record.get("heartbeat_s") or 0))
        age = self._fs_now() - mtime
        alive = age < stale_after
        return Holder(record, mtime, alive, f"its last heartbeat is {age:.0f}s old "
                                            f"({'alive' if alive else 'stale'} after {stale_after:.0f}s)")

    def _fs_now(self) -> float:
        """The file system's clock: the modification time of a file written just now."""
        if not getattr(self, "_probe", True):
            return time.time()
        if self.store is not None:
            return self.store.now(os.path.dirname(self.path))
        probe = os.path.join(os.path.dirname(self.path), f".clock{TMP_MARK}{uuid.uuid4().hex[:8]}")
        try:
            with open(probe, "w") as f:
                return os.fstat(f.fileno()).st_mtime
        except OSError:
            return time.time()
        finally:
            try:
                os.remove(probe)
            except OSError:
                pass

    def _obj_holder(self) -> Holder | None:
        found = self.store.stat(self.path)
        if found is None:
            return None
        data, mtime, etag = found
        try:
            record = json.loads(data)
            if not isinstance(record, dict):
                raise ValueError("not a mapping")
        except ValueError:
            age = self._fs_now() - mtime
            return Holder({"_etag": etag}, mtime, age < self.stale_after_s, f"unreadable lock object, {age:.0f}s old")
        return self._judge({**record, "_etag": etag}, mtime)

    def _record_bytes(self) -> bytes:
        return json.dumps(self.record, indent=2, sort_keys=True).encode("utf-8")

    # ---- taking and giving back --------------------------------------------------------------

    def acquire(self) -> Holder | None:
        """Take the lease, breaking one whose holder is dead; returns that dead holder (for a
        message) or None. Raises OutputLockedError naming a live holder."""
        taken_over: Holder | None = None
        self._taken = False
        for _ in range(8):
            if self._taken or self._create():
                self._start_heartbeat()
                return taken_over
            current = self.holder()
            if current is None:
                continue  # released meanwhile: try again
            if current.alive:
                raise OutputLockedError(self.refusal(current))
            self._break(current)
            taken_over = current
        raise OutputLockedError(f"{self.path}: could not take the lock (other runs keep racing for it); try again")

    def refusal(self, holder: Holder) -> str:
        where = os.path.dirname(self.path) or "."
        return (f"output directory {where!r} is in use by another run: {holder.describe()}. Wait for it to end or "
                f"stop it; the lock of a run that died is taken over by the next run (a run on another host "
                f"counts as dead once its heartbeat is older than {self.stale_after_s:g}s)")

    def _create(self) -> bool:
        if self.store is not None:
            self._etag = self.store.create(self.path, self._record_bytes())
            return self._etag is not None
        directory = os.path.dirname(self.path) or "."
        tmp = os.path.join(directory, f".{os.path.basename(self.path)}{TMP_MARK}{self.token[:8]}")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(self.record, f, indent=2, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
            mine = os.fstat(f.fileno()).st_ino  # the link shares it
        try:
            os.link(tmp, self.path)
        except FileExistsError:
            # NFS may report EEXIST for a link that did succeed (a retransmitted request): then
            # our temporary has two names.
            try:
                linked = os.stat(tmp).st_nlink == 2 and os.path.samefile(tmp, self.path)
            except OSError:
                linked = False
            if not linked:
                return False
        except FileNotFoundError:
            return False  # our temporary was removed under us (a holder cleaning up): retry
        except OSError:
            # No hard links on this file system: exclusive create, then the record.
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(self.record, f, indent=2, sort_keys=True)
                mine = os.fstat(f.fileno()).st_ino
        finally:
            try:
                os.remove(tmp)
            except OSError:
                pass
        try:
            self._fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return False
        if os.fstat(self._fd).st_ino != mine:  # broken and replaced in between: not ours after all
            os.close(self._fd)
            self._fd = None
            return False
        return True

    def _break(self, dead: Holder) -> None:
        log.warning("taking over the lock of %s: %s", os.path.dirname(self.path) or ".", dead.describe())
        if self.store is not None:
            # Replace exactly the record judged dead (If-Match on its ETag): a contender that
            # took it first makes this fail, and the next round sees the contender alive.
            etag = dead.record.get("_etag")
            if etag:
                self._etag = self.store.replace_if(self.path, self._record_bytes(), etag)
                if self._etag is not None:
                    self._taken = True
            return
        aside = os.path.join(os.path.dirname(self.path) or ".", f".{os.path.basename(self.path)}.stale{TMP_MARK}{self.token[:8]}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return  # another contender broke it first
        try:
            with open(aside, encoding="utf-8") as f:
                moved = json.load(f)
        except (OSError, ValueError):
            moved = {}
        if dead.record and moved.get("holder") != dead.record.get("holder"):
            # We moved a contender's fresh lease, not the dead one: put it back unless a third
            # took the place (then that contender finds its lease lost at its next heartbeat).
            try:
                os.link(aside, self.path)
            except OSError:
                pass
        try:
            os.remove(aside)
        except OSError:
            pass

    def still_held(self) -> bool:
        """True while the lease file is the one this object created."""
        if self.store is not None:
            if self._etag is None:
                return False
            found = self.store.stat(self.path)
            return found is not None and found[2] == self._etag
        if self._fd is None:
            return False
        try:
            return os.stat(self.path).st_ino == os.fstat(self._fd).st_ino
        except FileNotFoundError:
            return False

    def beat(self) -> bool:
        """Refresh the heartbeat; False (and `lost` set) when the lease was taken away."""
        if self.store is not None:
            etag = self.store.replace_if(self.path, self._record_bytes(), self._etag) if self._etag else None
            if etag is None:
                self.lost = (f"the lock {self.path} was taken away (removed, or taken over by another run that "
                             f"judged this one dead); this run stops committing")
                return False
            self._etag = etag
            return True
        if self._fd is None:
            return False
        try:
            os.utime(self._fd) if os.utime in os.supports_fd else os.utime(self.path)
        except OSError as e:
            log.warning("could not refresh the heartbeat of %s: %s", self.path, e)
        if not self.still_held():
            self.lost = (f"the lock {self.path} was taken away (removed, or taken over by another run that "
                         f"judged this one dead); this run stops committing")
            return False
        return True

    def _start_heartbeat(self) -> None:
        def loop() -> None:
            while not self._stop.wait(self.heartbeat_s):
                if not self.beat():
                    log.error("%s", self.lost)
                    return

        self._beater = threading.Thread(target=loop, name="capmill-heartbeat", daemon=True)
        self._beater.start()

    def release(self) -> None:
        """Give the lease back (only if it is still ours)."""
        self._stop.set()
        if self._beater is not None:
            self._beater.join(timeout=5)
        if self.store is not None:
            if self._etag is not None and self.still_held():
                self.store.remove(self.path)
            self._etag = None
            return
        if self._fd is None:
            return
        ours = self.still_held()
        os.close(self._fd)
        self._fd = None
        if ours:
            try:
                os.remove(self.path)
            except FileNotFoundError:
                pass


@dataclass
class LeaseView:
    """A lease as seen from another process (a Ray shard owner writing under its driver's lock):
    still held while the lease file names the same holder. Picklable."""

    path: str
    token: str
    lost: str | None = None
    # An object store's options, when the lease is an object there.
    storage_options: dict | None = None

    @classmethod
    def of(cls, lease: Lease, storage_options: dict | None = None) -> LeaseView:
        return cls(lease.path, lease.token, storage_options=storage_options)

    def still_held(self) -> bool:
        from capmill.writers.store import store_for

        store = store_for(self.path, self.storage_options)
        try:
            if store.local:
                with open(self.path, encoding="utf-8") as f:
                    holder = json.load(f).get("holder")
            else:
                found = store.stat(self.path)
                holder = json.loads(found[0]).get("holder") if found is not None else None
        except (OSError, ValueError, AttributeError):
            holder = None
        if holder != self.token:
            self.lost = (f"the lock {self.path} was taken away (removed, or taken over by another run that "
                         f"judged this one dead); this run stops committing")
            return False
        return True


class RunLock(Lease):
    """The exclusive lock of one run on its output directory (`OUT/_lock.json`). It refuses
    while cooperating runs hold the output (their member leases under `OUT/_cooperators/`)."""

    def __init__(self, out_dir: str, heartbeat_s: float = 10.0, stale_after_s: float = 120.0,
                 store: Store | None = None):
        super().__init__(os.path.join(out_dir, LOCK_FILE), mode="exclusive", heartbeat_s=heartbeat_s,
                         stale_after_s=stale_after_s, store=store)
        self.out_dir = out_dir

    def acquire(self) -> Holder | None:
        taken_over = super().acquire()
        members = live_cooperators(self.out_dir, self.stale_after_s, store=self.store)
        if members:  # written our lease first, looked second: a cooperator starting now sees ours
            self.release()
            raise OutputLockedError(cooperators_refusal(self.out_dir, members))
        return taken_over


class CooperativeLock(Lease):
    """One cooperating run's member lease (`OUT/_cooperators/TOKEN.json`, `mode: cooperate`):
    cooperating runs accept each other; an exclusive run's live `_lock.json` is refused."""

    def __init__(self, out_dir: str, heartbeat_s: float = 10.0, stale_after_s: float = 120.0,
                 store: Store | None = None):
        token = uuid.uuid4().hex
        super().__init__(os.path.join(out_dir, COOPERATORS_DIR, f"{token}.json"), mode="cooperate",
                         heartbeat_s=heartbeat_s, stale_after_s=stale_after_s, store=store)
        self.token = self.record["holder"] = token
        self.out_dir = out_dir

    def acquire(self) -> Holder | None:
        if self.store is None:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
        super().acquire()
        exclusive = exclusive_holder(self.out_dir, self.stale_after_s, store=self.store)
        if exclusive is not None:
            self.release()
            raise OutputLockedError(exclusive_refusal(self.out_dir, exclusive))
        return None


def exclusive_holder(out_dir: str, stale_after_s: float = 120.0, write_probe: bool = True,
                     store: Store | None = None) -> Holder | None:
    """The live run holding `out_dir` alone, if any."""
    holder = Lease(os.path.join(out_dir, LOCK_FILE), stale_after_s=stale_after_s, store=store).holder(write_probe)
    return holder if holder is not None and holder.alive else None


def live_cooperators(out_dir: str, stale_after_s: float = 120.0, write_probe: bool = True,
                     store: Store | None = None) -> list[Holder]:
    """The member leases of live cooperating runs on `out_dir`; those of dead runs are removed
    on the way (with `write_probe`; a dry run only looks)."""
    from capmill.writers.store import LOCAL

    files = store or LOCAL
    folder = os.path.join(out_dir, COOPERATORS_DIR)
    names = sorted(n for n in files.listdir(folder) if n.endswith(".json") and not n.startswith("."))
    alive = []
    for name in names:
        lease = Lease(os.path.join(folder, name), stale_after_s=stale_after_s, store=store)
        holder = lease.holder(write_probe)
        if holder is None:
            continue
        if holder.alive:
            alive.append(holder)
        elif write_probe:
            try:
                files.remove(lease.path)
            except OSError:
                pass
    return alive


def cooperators_refusal(out_dir: str, members: list[Holder]) -> str:
    return (f"output directory {out_dir!r} is in use by {len(members)} cooperating run(s) (--cooperate), e.g. "
            f"{members[0].describe()}. Join them with --cooperate, or wait for them to end")


def exclusive_refusal(out_dir: str, holder: Holder) -> str:
    return (f"output directory {out_dir!r} is held by a run without --cooperate: {holder.describe()}. "
            f"Wait for it to end, or stop it and start every run with --cooperate")
