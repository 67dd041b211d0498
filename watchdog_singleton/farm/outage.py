"""A database outage the farm rides out: a PostgreSQL that stopped answering for a moment (a
restart, a failover, a network blip) instead of ending a farm whose leases would carry it through.

    outage = Outage(bound=options.lease, retry_every=2.0)
    outage.begin(error, now)         # the first transient failure (store.Guarded is `down` now)
    outage.due(now)                  # time to probe again: the farm sends a heartbeat
    outage.past_bound(now)           # lasted longer than the bound: give up, exit 74
    outage.end(now, recorded)        # the database answered; the line to say

The farm's loop (workers.py) acts: while it lasts it claims nothing and reads nothing, its
running tasks run on until the lease's give-up deadline (lease.py, and the nursery: then they
are stopped, to run again later, never beside another farm), the results it cannot record are
kept (store.Guarded) and recorded, in order, by the first heartbeat that goes through.

The bound is the lease, from the first failure: by then the give-up deadline (`lease - margin`
after the last renewal, which came before the failure) has stopped every task and any other farm
may take them, so the farm holds nothing, and waiting on only keeps a batch slot busy.
This module only keeps the times and words; it touches nothing.
"""

from __future__ import annotations

import math
from typing import Optional

from ..timefmt import clock_time
from .store import StoreError

RETRY_EVERY = 2.0  # how often a farm whose database does not answer tries it again (at most)


def retry_every(lease: float) -> float:
    """The outage's cadence: every RETRY_EVERY seconds, or as often as a heartbeat if that is sooner."""
    return min(RETRY_EVERY, max(0.05, lease / 3))


class Outage:
    def __init__(self, bound: float, retry_every: float) -> None:
        self.bound = bound
        self.retry_every = retry_every
        self.error: Optional[StoreError] = None  # the first failure of the outage under way
        self.since = 0.0  # the farm's clock (monotonic) at that failure
        self.next_probe = math.inf

    @property
    def active(self) -> bool:
        return self.error is not None

    def begin(self, error: StoreError, now: float) -> None:
        self.error, self.since = error, now
        self.next_probe = now + self.retry_every

    def due(self, now: float) -> bool:
        return self.active and now >= self.next_probe

    def probed(self, now: float) -> None:
        if self.active:
            self.next_probe = now + self.retry_every

    def past_bound(self, now: float) -> bool:
        return self.active and now - self.since > self.bound

    def deadline(self) -> float:
        """When the farm gives up (the farm's clock), or inf."""
        return self.since + self.bound if self.active else math.inf

    def began_line(self, running: int, tasks_until: float, give_up: float) -> str:
        """The line said once when it starts; `tasks_until` and `give_up` are wall-clock times."""
        assert self.error is not None
        tasks = (f"{running} task(s) run on until {clock_time(tasks_until)}, the lease's give-up deadline"
                 if running and math.isfinite(tasks_until) else "no task is running")
        return (f"farm: {self.error.where}: unreachable ({self.error.reason}); retrying every "
                f"{self.retry_every:g} s until {clock_time(give_up)}, no new claims meanwhile; {tasks}")

    def end(self, now: float, recorded: int) -> str:
        """The database answered: the line said once, and the outage is over."""
        assert self.error is not None
        kept = f"; {recorded} result(s) kept meanwhile recorded" if recorded else ""
        line = (f"farm: {self.error.where}: answers again after {now - self.since:.0f} s{kept}; "
                "the farm goes on")
        self.error, self.next_probe = None, math.inf
        return line

    def stopped_line(self, reason: str, lost: str, code: int) -> str:
        """A stop (a signal, --timeout) during the outage: the database may be back for the next farm."""
        assert self.error is not None
        return (f"farm: stopped ({reason}) while its {self.error.where} does not answer{lost}: "
                f"run the farm again to continue (exit {code})")

    def failure(self, now: float) -> str:
        """What the farm says when it gives up (its exit-74 line)."""
        assert self.error is not None
        return f"{self.error} (no answer for {now - self.since:.0f} s, over the --lease of {self.bound:g} s)"
