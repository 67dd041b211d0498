"""The farm's lease bookkeeping: the give-up deadline and what a heartbeat decided.

    leases = Leases(options.lease, tell=nursery.renew)
    leases.renewed(boottime())                      # the deadline moves to `lease - margin` later
    beat = leases.heartbeat(store, holder, slots)   # None: nothing renewed, the deadline stays
                                                    # (check=True: compare what we hold, after an outage)
    if beat: stop beat.taken at once, then leases.renewed(beat.sent)
    if leases.overdue(boottime()): stop every task at once

The deadline is on CLOCK_BOOTTIME, from when the heartbeat that renewed every lease was sent;
the margin is the time to SIGKILL and reap. The farm acts on the decisions (workers.py).
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional

from .attempt import Slot
from .nursery import boottime
from .store import Claim, Guarded


class Beat(NamedTuple):
    """A heartbeat that renewed the farm's leases: when it was sent, and the slots whose lease
    another farm took meanwhile (to stop at once)."""
    sent: float
    taken: list[Slot]


class Leases:
    def __init__(self, lease: float, tell: Callable[[float], None], clock: Callable[[], float] = boottime) -> None:
        self.clock = clock  # CLOCK_BOOTTIME
        self.lease = lease
        self.margin = min(lease / 4, 5.0)
        self.give_up_at = float("inf")
        self.tell = tell  # the nursery, which stops every task at the deadline too

    def renewed(self, sent: float) -> None:
        self.give_up_at = sent + self.lease - self.margin
        self.tell(self.give_up_at)

    def overdue(self, now: float) -> bool:
        """Past the deadline (a pause, a database we could not reach): our leases may be gone and
        the tasks given to another farm; every task stops now. Says so once."""
        if now < self.give_up_at:
            return False
        self.give_up_at = float("inf")
        return True

    def heartbeat(self, store: Guarded, holder: str, slots: list[Slot], check: bool = False) -> Optional[Beat]:
        sent = self.clock()
        renewed = store.heartbeat(holder, self.lease)
        if renewed < 0:  # the store failed: nothing was renewed, so the give-up deadline stays where it is
            return None
        held = {(s.claim.id, s.claim.gen): s for s in slots if s.claim is not None}
        if renewed == len(held) and not check:
            return Beat(sent, [])
        ours = store.holding(holder)
        if ours is None:
            return None
        # A claim whose answer was lost (the connection dropped after the commit) holds tasks no
        # slot runs: without this our heartbeats would keep them ours forever. Back to todo.
        for tid, gen in ours - held.keys():
            store.release(Claim(tid, "", gen, 0))
        # Some lease was taken over (we were paused past it): those tasks stop now.
        return Beat(sent, [s for key, s in held.items() if key not in ours])
