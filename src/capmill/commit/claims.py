"""Several runs sharing one output (`capmill run --cooperate`): per-shard claims.

    OUT/_cooperators/TOKEN.json   one lease per cooperating run (`mode: cooperate`)
    OUT/_claims/SHARD.json        the lease of the run processing SHARD now

A cooperating run holds its own member lease instead of the exclusive `_lock.json`: cooperating
runs accept each other, an exclusive run refuses while any member lease is alive, and a
cooperating run refuses while a live exclusive lock exists (each writes its lease first and
looks for the other kind second, so two runs starting at once never both proceed).

Before processing a shard a run takes its claim, a `Lease` like the run lock (created
atomically, heartbeat = modification time, a dead holder's claim taken over), then looks at the
shard's commit record again: if it changed since the run planned (another run committed the
shard meanwhile), the claim is given back and the shard skipped. A shard is committed only while
its claim is held, so each shard is processed to the end exactly once; a claim taken over from a
dead run first removes the temporaries that run left for that shard.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from capmill.commit.lock import Lease, LeaseView
from capmill.errors import OutputLockedError
from capmill.outputdir import CLAIMS_DIR

if TYPE_CHECKING:
    from capmill.commit.plan import ShardTask
    from capmill.outputdir import OutputDir

log = logging.getLogger("capmill.claims")


class ClaimCheck(Protocol):
    def check(self, shard: str) -> str | None:
        """None while this run holds the shard's claim, else why it does not."""


@dataclass
class ClaimView(LeaseView):
    """A shard's claim as seen by the Ray owner writing it for the claiming driver."""

    def check(self, shard: str) -> str | None:
        return None if self.still_held() else f"the claim {self.path} was taken away (another run judged this one dead)"


class ShardClaims:
    """The claims this run holds, taken and given back as its executor goes through the shards."""

    def __init__(self, out: OutputDir, planned: dict[str, dict[str, Any]], heartbeat_s: float = 10.0,
                 stale_after_s: float = 120.0):
        self.out = out
        self.planned = planned  # shard → its commit record when the run planned (absent: none)
        self.heartbeat_s, self.stale_after_s = heartbeat_s, stale_after_s
        self.held: dict[str, Lease] = {}
        self.elsewhere: set[str] = set()  # claimed by a live run when this one came to them
        self.done_elsewhere: set[str] = set()  # committed by another run after this one planned
        self._lock = threading.Lock()

    def path(self, shard: str) -> str:
        return self.out.join(CLAIMS_DIR, f"{shard}.json")

    def take(self, task: ShardTask) -> bool:
        """Claim the task's shard; False when another live run holds it or has committed it."""
        name = task.shard.name
        self.out.makedirs(CLAIMS_DIR)
        lease = Lease(self.path(name), mode="claim", heartbeat_s=self.heartbeat_s, stale_after_s=self.stale_after_s,
                      store=self.out.store)
        try:
            dead = lease.acquire()
        except OutputLockedError:
            self.elsewhere.add(name)
            return False
        if dead is not None:
            removed = self.out.remove_temporaries(shard=name)
            log.warning("shard %s: took over the claim of a run that died (%s); removed %d temporaries it left",
                        name, dead.describe(), removed)
        if self.out.record_of(name) != self.planned.get(name):
            lease.release()
            self.done_elsewhere.add(name)
            return False
        with self._lock:
            self.held[name] = lease
        return True

    def release(self, shard: str) -> None:
        with self._lock:
            lease = self.held.pop(shard, None)
        if lease is not None:
            lease.release()

    def release_all(self) -> None:
        for name in list(self.held):
            self.release(name)

    def check(self, shard: str) -> str | None:
        lease = self.held.get(shard)
        if lease is None:
            return f"this run holds no claim on shard {shard}"
        if not lease.still_held():
            return f"the claim {lease.path} was taken away (another run judged this one dead)"
        return None

    def view(self, shard: str) -> ClaimView:
        lease = self.held[shard]
        return ClaimView(lease.path, lease.token, storage_options=self.out.storage_options or None)
