"""Every grant the cluster house holds on one database, renewed in one round trip by one thread.

    renewer = Renewer(engines.open_link(url, timing))  # one per database URL in the house
    guard.together = renewer       # the guard's start_renewing adds its keeper, stop_renewing removes it
    renewer.tick()                 # inline (threaded=False, the fake world): renew if any grant is due

Aligned: when any grant is due, all of them are renewed, in one statement over the one connection
(`SharedLink.renew_all`). Renewing early is always safe: a renew only moves a grant's expiry on
the database later, and each job's give-up deadline is still counted from the send time of the
statement that renewed it (keeper.py's rule, CLOCK_BOOTTIME). That send time is read before
waiting for the connection (another job's acquire may be on it), so it is never later than the
real send: the deadline errs early, on the safe side. Each job keeps its own row, token and
deadline: a row that does not come back is LOST for its job alone; a database error (the
connection drops, the statement times out) is RETRY for every job, each until its own deadline,
as a database outage is for a supervisor of its own; the link reopens its connection at the
next round trip. An answer is given only to a keeper still added with the grant that was sent:
one removed meanwhile (released, lost, its job gone) is left alone.
"""

from __future__ import annotations

import _thread

from . import LeaseUnavailable
from .keeper import RENEWED, boottime

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing stays out of the resident supervisor's memory; annotations are strings
    from typing import Callable, Optional

    from . import Grant, SharedLink
    from .keeper import LeaseKeeper

INF = float("inf")


class Renewer:
    def __init__(self, link: SharedLink, clock: Callable[[], float] = boottime, threaded: bool = True,
                 told: Callable[[], None] = lambda: None) -> None:
        self.link = link
        self.clock = clock
        self.told = told  # after each round trip's answers (the house beats its watcher once)
        self.threaded = threaded  # False: no thread, `tick` renews (tests, in simulated time)
        self.keepers: dict[str, tuple[LeaseKeeper, Callable[[], None]]] = {}  # by job name
        self.lock = _thread.allocate_lock()  # the keepers, and giving out a round trip's answers
        self.poke = _thread.allocate_lock()  # released to wake the thread before its time
        self.poke.acquire()
        self.running = False  # the thread runs (it ends when no keeper is left)
        self.rounds = 0  # renew round trips made, for tests and status

    def add(self, keeper: LeaseKeeper, wake: Callable[[], None]) -> None:
        """Renew `keeper`'s grant with the others from now on; `wake` wakes its job's loop when
        the grant is lost or a renew failed."""
        with self.lock:
            if self.keepers.get(keeper.name) == (keeper, wake):
                return
            self.keepers[keeper.name] = (keeper, wake)
            start = self.threaded and not self.running
            self.running = self.running or start
        if start:
            _thread.start_new_thread(self._loop, ())
        else:
            self._poke()  # its renew may be due before the one the thread waits for

    def remove(self, keeper: LeaseKeeper) -> None:
        """Stop renewing `keeper`'s grant. Never waits for a round trip in flight (its answer is
        then given to no one)."""
        with self.lock:
            entry = self.keepers.get(keeper.name)
            if entry is None or entry[0] is not keeper:
                return
            del self.keepers[keeper.name]
            empty = not self.keepers
        if empty:
            self._poke()  # the thread ends

    def next_at(self) -> float:
        """When the next renew is due: the earliest of the held grants' (the clock's time)."""
        with self.lock:
            keepers = [keeper for keeper, _ in self.keepers.values()]
        return min((k.next_renew for k in keepers if k.wake_at() is not None), default=INF)

    def tick(self) -> None:
        """Inline: renew every grant once any is due."""
        if self.clock() >= self.next_at():
            self.renew_all()

    def renew_all(self) -> None:
        """One round trip renewing every held grant; each job's verdict on its own keeper."""
        with self.lock:
            held = [(k, wake, k.grant) for k, wake in self.keepers.values() if k.wake_at() is not None]
        sent = self.clock()
        woken: list[Callable[[], None]] = []
        asks: list[tuple[LeaseKeeper, Callable[[], None], Grant]] = []
        for keeper, wake, grant in held:
            if grant is None:
                continue
            if keeper.asking(sent) is None:
                asks.append((keeper, wake, grant))
            else:
                woken.append(wake)  # past its deadline: lost, for it alone
        problem: Optional[str] = None
        renewed: dict[str, Grant] = {}
        if asks:
            try:
                renewed = self.link.renew_all([(grant, k.timing.lease) for k, _, grant in asks],
                                              min(k.timing.attempt for k, _, _ in asks))
            except LeaseUnavailable as exc:
                problem = str(exc)
            self.rounds += 1
        with self.lock:
            for keeper, wake, grant in asks:
                if self.keepers.get(keeper.name, (None, None))[0] is not keeper or keeper.grant is not grant:
                    continue  # removed (or granted anew) while we asked: this answer is no one's
                if problem is not None:
                    verdict = keeper.failed(problem, sent)
                else:
                    verdict = keeper.answered(renewed.get(grant.name), sent, tell=False)
                if verdict != RENEWED:
                    woken.append(wake)  # the loop notes the problem, or stops the tree
        if asks:
            self.told()  # the new deadlines, once for all (each only later than the one before)
        for wake in woken:
            wake()

    def _loop(self) -> None:
        try:
            while True:
                with self.lock:
                    if not self.keepers:
                        self.running = False
                        return
                delay = self.next_at() - self.clock()
                if delay > 0:
                    self.poke.acquire(True, delay if delay < INF else -1)  # poked: look again
                    continue
                self.renew_all()
        except BaseException as exc:  # noqa: BLE001  a thread's death must reach every job's loop
            with self.lock:
                everyone, self.keepers, self.running = list(self.keepers.values()), {}, False
            for keeper, wake in everyone:
                keeper.problem = f"the renew thread failed: {exc.__class__.__name__}: {exc}"
                keeper._lost = True
                wake()

    def _poke(self) -> None:
        try:
            self.poke.release()
        except RuntimeError:  # poked already, not yet woken
            pass

