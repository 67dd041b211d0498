"""A cluster job's lease as its supervisor sees it: asked for before each start, renewed while
the daemon runs, noticed when lost, given back when the run or the supervisor ends.

    guard = ClusterGuard(job, open_cluster(job.cluster, timing), timing, wake)
    gate = guard.gate()             # before a start: gate.go, or why not (gate.why)
    ...                             # while the daemon runs, a thread renews (guard.start_renewing)
    if guard.lost():                # past the renew deadline, or the database said it is gone
        stop_the_tree(grace=timing.capped_grace(job.grace))
    guard.run_ended()               # sync or rotate: release after each run (rotate: pass the turn)
    guard.close()                   # at exit, once the tree is gone: release

Renewing runs in a thread of its own so that a database round trip that hangs never holds up
the output pump or the deadlines; the main loop only reads the keeper's verdict (`lost`) on
its own clock and wakes for the give-up deadline. Acquiring happens in the main loop: nothing
runs then that a slow round trip could hold up. Tests pass `threaded=False` and a fake clock,
and the supervisor's tick renews inline.

In the shared resident, whose loop serves other jobs too, the guard is `patient = False`: it
never waits for its renew thread (in the cluster house it has none: `together`, renewer.py,
renews every job's grant on that database in one round trip from one thread), and with
`beside = True` the gate's round trips (acquire, the sync slot, the turn) run in a thread of
their own (`ask_beside`), whose answer the next `gate` takes; the loop only waits for a wake.
"""

from __future__ import annotations

import _thread

from . import CRON_TICK, LeaseUnavailable, Timing, fresh_window
from .keeper import LOST, RETRY, LeaseKeeper, boottime

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing stays out of the resident supervisor's memory; annotations are strings
    from typing import Callable, Optional

    from ..job.model import Job
    from . import ClusterLease
    from .renewer import Renewer


def heartbeat_tick(job: Job) -> float:
    """How often a host of JOB asks the database when it does not hold the lease: at each due time
    (--every), each retry (--standby) or each cron tick."""
    if job.supervised_schedule:
        return job.every if job.every > 0 else CRON_TICK
    return Timing.for_lease(job.lease).retry if job.standby else CRON_TICK


def sync_slack(period: float) -> float:
    """How much earlier than a full period a sync slot may start: the hosts' cron ticks and
    supervisors start a little apart, and a start stamped late must not cost the next period."""
    return min(period / 10, 5.0)


class Gate:
    """Whether a start may go ahead, and if not, why (for the log and `status`)."""

    def __init__(self, go: bool, why: str = "", holder: str = "", unreachable: bool = False,
                 taken: bool = False) -> None:
        self.go, self.why, self.holder, self.unreachable = go, why, holder, unreachable
        self.taken = taken  # sync: this period's run already started on another host

    def __repr__(self) -> str:
        return f"Gate(go={self.go}, why={self.why!r})"


class ClusterGuard:
    def __init__(self, job: Job, cluster: ClusterLease, timing: Timing, wake: Callable[[], None],
                 clock: Callable[[], float] = boottime, threaded: bool = True) -> None:
        self.job = job
        self.cluster = cluster
        self.timing = timing
        self.wake = wake
        self.clock = clock
        self.threaded = threaded
        self.keeper = LeaseKeeper(cluster, job.name, timing, clock)
        self._stop_lock: Optional[_thread.LockType] = None  # held while a renew thread may run
        self._done_lock: Optional[_thread.LockType] = None  # held by the renew thread until it ends
        self.patient = True  # False (the shared resident): never wait for the renew thread
        self.beside = False  # True (the shared resident): the gate asks in a thread of its own
        self.answer: Optional[Gate] = None  # that thread's answer, for the next `gate`
        self.asking = False  # that thread runs
        self._closing = _thread.allocate_lock()  # `close` and the end of that thread, one at a time
        self.closed = False
        self.together: Optional[Renewer] = None  # the cluster house: one renewer for every job on the database

    # -- asking --------------------------------------------------------------------------------
    @property
    def holding(self) -> bool:
        return self.keeper.grant is not None and not self.lost()

    @property
    def token(self) -> Optional[int]:
        return self.keeper.token

    @property
    def fresh(self) -> float:
        return fresh_window(self.timing.lease, heartbeat_tick(self.job))

    def gate(self) -> Gate:
        """One decision before a start: hold the lease (and, for sync, this period's slot; for
        rotate, the turn). Never raises for an unreachable database. The answer of a thread
        `ask_beside` started, if there is one."""
        answer, self.answer = self.answer, None
        if answer is not None and (self.holding or not answer.go):
            return answer
        if self.holding:
            return Gate(True)
        return self._ask()

    def ask_beside(self) -> bool:
        """With `beside`: the gate's round trips in a thread of their own, so that a slow or
        unreachable database holds up no other job's loop. True while its answer is not in yet
        (it wakes the loop when it is); False when `gate` may be called now."""
        if not self.beside or self.answer is not None or self.holding:
            return False
        if not self.asking:
            self.asking = True
            _thread.start_new_thread(self._ask_thread, ())
        return True

    def _ask_thread(self) -> None:
        try:
            answer = self._ask()
        except BaseException as exc:  # noqa: BLE001  a thread's death must reach the main loop
            answer = Gate(False, f"the lease request failed: {exc.__class__.__name__}: {exc}", unreachable=True)
        with self._closing:
            self.answer = answer
            self.asking = False
            if self.closed:  # the job left while we asked: what we got goes back at once
                self._give_back()
                return
        self.wake()

    def _ask(self) -> Gate:
        self.forget()
        name = self.job.name
        try:
            if self.job.rotate:
                self.cluster.heartbeat(name)
                turn = self.cluster.whose_turn(name, self.fresh)
                if turn is not None and turn != self.cluster.host:
                    return Gate(False, f"it is {turn}'s turn", holder=turn)
            grant = self.keeper.acquire()
            if grant is None:
                holder = self.cluster.seen_holder
                return Gate(False, f"held by {holder or 'another host'}", holder=holder)
            if self.job.sync:
                period = self.job.period
                if self.cluster.claim_slot(name, max(period - sync_slack(period), 0.001)) is None:
                    self.keeper.release()
                    return Gate(False, "this period's run already started on another host", taken=True)
        except LeaseUnavailable as exc:
            # A grant taken before the failure (sync: the slot could not be claimed) is given
            # back, or the next gate would find it held and start without claiming a slot.
            self.keeper.release()
            self.keeper.problem = str(exc)
            return Gate(False, str(exc), unreachable=True)
        return Gate(True)

    # -- holding -------------------------------------------------------------------------------
    def lost(self) -> bool:
        return self.keeper.lost(self.clock())

    def seconds_to_look(self) -> Optional[float]:
        """When the main loop must look again: the give-up deadline (and, inline, the renew)."""
        keeper = self.keeper
        if keeper.grant is None or keeper.lost(self.clock()):
            return None
        when = keeper.give_up_at if self.threaded else min(keeper.give_up_at, keeper.next_renew)
        return max(0.0, when - self.clock())

    def tick(self) -> None:
        """Inline mode: renew when due (with `together`: every grant on the database once any is
        due). Threaded: the renew thread does it."""
        if self.threaded:
            return
        if self.together is not None:
            self.together.tick()
        elif self.keeper.due(self.clock()):
            self.keeper.renew()

    def start_renewing(self) -> None:
        if self.together is not None:
            if self.keeper.grant is not None:
                self.together.add(self.keeper, self.wake)
            return
        if not self.threaded or self._stop_lock is not None or self.keeper.grant is None:
            return
        stop, done = _thread.allocate_lock(), _thread.allocate_lock()
        stop.acquire()
        done.acquire()
        self._stop_lock, self._done_lock = stop, done
        _thread.start_new_thread(self._renew_loop, (stop, done))

    def _renew_loop(self, stop: _thread.LockType, done: _thread.LockType) -> None:
        keeper = self.keeper
        try:
            while True:
                delay = keeper.next_renew - self.clock()
                if delay > 0 and stop.acquire(True, delay):
                    return  # told to stop
                if self._stop_lock is not stop:
                    return
                result = keeper.renew()
                if result in (LOST, RETRY):
                    self.wake()  # the main loop notes the problem, or stops the tree
                if result == LOST:
                    return
        except BaseException as exc:  # noqa: BLE001  a thread's death must reach the main loop
            keeper.problem = f"the renew thread failed: {exc.__class__.__name__}: {exc}"
            keeper._lost = True
            self.wake()
        finally:
            done.release()

    def stop_renewing(self) -> None:
        if self.together is not None:
            self.together.remove(self.keeper)  # never waits: an answer in flight goes to no one
            return
        stop, done = self._stop_lock, self._done_lock
        self._stop_lock = self._done_lock = None
        if stop is None or done is None:
            return
        stop.release()
        # A renew in flight ends within one attempt; past that we go on without it (it holds no
        # state of ours but the keeper, which release below replaces). The shared resident goes
        # on at once: its loop serves other jobs (a renew that still succeeds only extends a
        # grant we stopped counting on, which the release, or its expiry, ends).
        if self.patient:
            done.acquire(True, self.timing.attempt + 1.0)

    # -- giving back ---------------------------------------------------------------------------
    def forget(self) -> None:
        """After a loss: the grant is gone; stop renewing it."""
        self.stop_renewing()
        if self.keeper.grant is not None and self.keeper.lost(self.clock()):
            self.keeper.grant = None

    def run_ended(self) -> Optional[str]:
        """After a run of a sync or rotate job: give the lease back (rotate: and pass the turn).
        The host whose turn it is now, when rotating and the database answered."""
        if not (self.job.sync or self.job.rotate):
            return None
        turn = None
        self.stop_renewing()
        if self.job.rotate:
            try:
                turn = self.cluster.pass_turn(self.job.name, self.fresh)
            except LeaseUnavailable as exc:
                self.keeper.problem = str(exc)
        self.keeper.release()
        return turn

    def close(self) -> None:
        """At exit, the tree gone: release (a standby need not wait out the lease). A gate thread
        still asking releases what it gets when its answer comes (the loop does not wait for it)."""
        with self._closing:
            self.closed = True
            if self.asking:
                return
        self._give_back()

    def _give_back(self) -> None:
        self.stop_renewing()
        self.keeper.release()
        try:
            self.cluster.close()
        except Exception:  # noqa: BLE001  closing a broken connection: nothing more to do
            pass
