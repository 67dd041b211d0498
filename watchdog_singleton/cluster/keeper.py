"""The holder's side of a cluster lease: renew on time, and know when to give up.

    keeper = LeaseKeeper(open_cluster(url, timing), job.name, timing)
    if keeper.acquire() is None:
        ...                                  # another host holds it: leave, as with a held flock
    while running:
        if keeper.lost(clock()):             # past the renew deadline, or the engine said lost
            stop_the_tree()                  # it must be dead before the engine's expiry
        elif keeper.due(clock()):
            keeper.renew()                   # RENEWED, RETRY (engine unreachable) or LOST
    keeper.release()

Every deadline is on this host's CLOCK_BOOTTIME (monotonic, and counting a suspend, which
CLOCK_MONOTONIC does not), from the moment the request that succeeded was *sent*: the engine
stamps its expiry after it received that request, so `sent + renew_deadline` on our clock comes
at least `lease - renew_deadline` seconds before the expiry on the engine's. That margin, less
one round trip that may hang for up to `Timing.attempt`, is `Timing.stop_budget()`: the time to
stop the tree (its grace plus the SIGKILL wait) before another host can take over.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Callable, Optional

from . import Grant, LeaseUnavailable, Timing

if TYPE_CHECKING:
    from . import ClusterLease

RENEWED = "renewed"
RETRY = "retry"  # the engine could not be reached: try again at the next retry, until the deadline
LOST = "lost"  # expired, released or taken, or our deadline passed: stop the tree now


def boottime() -> float:
    try:
        return time.clock_gettime(time.CLOCK_BOOTTIME)
    except (AttributeError, OSError):
        return time.monotonic()


class LeaseKeeper:
    def __init__(self, cluster: ClusterLease, name: str, timing: Timing,
                 clock: Callable[[], float] = boottime) -> None:
        self.cluster = cluster
        self.name = name
        self.timing = timing
        self.clock = clock
        self.grant: Optional[Grant] = None
        self.give_up_at = 0.0  # our clock: when we must consider the lease gone
        self.next_renew = 0.0
        self.problem = ""  # the last failure, for the log
        self._lost = False
        # Told each new give-up deadline (a grant, a renew): the watcher stops the tree when it
        # passes with no newer one, should this process be stopped or dead (cluster/watcher.py).
        self.on_deadline: Callable[[float], None] = lambda deadline: None

    @property
    def token(self) -> Optional[int]:
        return self.grant.token if self.grant else None

    def acquire(self) -> Optional[Grant]:
        """One try (raises LeaseUnavailable). The grant, or None if another holder has it."""
        sent = self.clock()
        grant = self.cluster.acquire(self.name)
        if grant is not None:
            self._granted(grant, sent)
        return grant

    def _granted(self, grant: Grant, sent: float, tell: bool = True) -> None:
        # The deadline before the grant: the shared resident reads both from another thread, and
        # a new grant beside an old, passed deadline would look like a lease being lost.
        self.give_up_at = sent + self.timing.renew_deadline
        self.next_renew = sent + self.timing.retry
        self._lost = False
        self.problem = ""
        self.grant = grant
        if tell:
            self.on_deadline(self.give_up_at)

    def due(self, now: float) -> bool:
        return self.grant is not None and now >= self.next_renew

    def lost(self, now: float) -> bool:
        """True once the grant cannot be counted on: stop the tree."""
        return self._lost or (self.grant is not None and now >= self.give_up_at)

    def wake_at(self) -> Optional[float]:
        """The next moment the holder's loop must look: a renew, or the give-up deadline."""
        if self.grant is None or self._lost:
            return None
        return min(self.next_renew, self.give_up_at)

    def renew(self) -> str:
        """One renew attempt; never raises for an unreachable engine (RETRY)."""
        sent = self.clock()
        verdict = self.asking(sent)
        if verdict is not None:
            return verdict
        assert self.grant is not None
        try:
            renewed = self.cluster.renew(self.grant)
        except LeaseUnavailable as exc:
            return self.failed(str(exc), sent)
        return self.answered(renewed, sent)

    def asking(self, sent: float) -> Optional[str]:
        """Before a renew sent at `sent`: LOST when there is nothing to renew any more, else None."""
        if self.grant is None or self._lost:
            return LOST
        if sent >= self.give_up_at:
            return self._lose(f"no renew of {self.name} succeeded for {self.timing.renew_deadline:g} s")
        return None

    def answered(self, renewed: Optional[Grant], sent: float, tell: bool = True) -> str:
        """The engine's answer to the renew sent at `sent` (None: our row did not come back).
        `tell=False`: the new deadline is not passed to `on_deadline` (the caller tells once for
        many keepers; a later deadline told late is safe, the watcher acts on the earlier one)."""
        if renewed is None:
            token = self.grant.token if self.grant is not None else None
            return self._lose(f"lease {self.name} token {token} was lost (expired or taken)")
        self._granted(renewed, sent, tell)
        return RENEWED

    def failed(self, problem: str, sent: float) -> str:
        """The renew sent at `sent` got no answer: try again at the next retry, until the deadline."""
        self.problem = problem
        self.next_renew = min(sent + self.timing.retry, self.give_up_at)
        return RETRY

    def _lose(self, why: str) -> str:
        self._lost = True
        self.problem = why
        return LOST

    def release(self) -> bool:
        """Expire our grant at once, so a standby need not wait for the lease to run out. An
        unreachable engine is no error here: the grant expires by itself."""
        grant, self.grant = self.grant, None
        if grant is None:
            return False
        try:
            return self.cluster.release(grant)
        except LeaseUnavailable as exc:
            self.problem = str(exc)
            return False
