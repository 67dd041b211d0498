"""The shared resident (install --shared): one process that supervises all of a user's shared jobs.

    house = House(StateStore(root), socket_path=path)
    house.open()                                   # the signals, the one poll every job shares
    house.take(job, lock, ready=ready)             # a job handed over with its held lock
    code = house.run()                             # until no job is left

Each job is a `core.Supervisor` as a resident of its own would run it (its Lifecycle, output, state
keeper and lock watch), driven piece by piece by this one loop: one poll and one wake-up pipe for
all of them, one reap whose (pid, status) pairs go to the job whose daemon it is, and the lock
watches due in the same wake-up (a job that joins takes the next look of those already here).

Isolation: an exception in one job's handling stops that job's tree, releases its lock, is written
to its log, and the others run on. A job's tree is its daemon, what descends from it and what
carries its token (child.Child in shared mode), never the resident's other children. Every stop
(asked over the socket, or by a job's own run: its timeout, its lifetime, its daemon's leftovers)
sends SIGTERM and waits out its grace beside the loop, never holding another job's restart. Each daemon
inherits only its own lock's descriptors. SIGTERM stops every job, SIGHUP reopens every log and
looks at once at every lock and at the resident's own socket, lock and pid files,
SIGUSR2 re-reads every definition; one job is stopped or re-read through the socket (housewire.py),
never a signal, which would reach all of them.
"""

from __future__ import annotations

import _signal

from ..proc.children import Wakeups
from ..proc.fdlimit import out_of, room
from ..state.phases import Phase
from .core import Supervisor
from .pump import OutputPump, PumpShare
from .seams import Seams

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing stays out of the resident supervisor's memory; annotations are strings
    from typing import Any, Callable, Optional, TypeVar

    from ..job.model import Job
    from ..lock.flock import SingletonLock
    from ..state.store import StateStore
    from .anchorlink import AnchorLink
    from .housecluster import ClusterDuty

    Ready = Callable[[Optional[str]], None]
    T = TypeVar("T")

ENDING_LOOK = 0.05  # how often an ending job's tree is looked for while its grace runs
SIGTERM, SIGINT, SIGHUP, SIGUSR2 = _signal.SIGTERM, _signal.SIGINT, _signal.SIGHUP, _signal.SIGUSR2
SIGCONT = 18


class Member:
    """One job in the house: its supervisor, the exits reaped for it, who waits for its stop."""

    __slots__ = ("name", "sup", "inbox", "waiting", "ending_since", "on_leave")

    def __init__(self, name: str) -> None:
        self.name = name
        self.sup: Supervisor
        self.inbox: list[tuple[int, int]] = []
        self.waiting: list[Callable[[bool], None]] = []
        self.ending_since: Optional[float] = None  # its tree got SIGTERM then; its grace runs beside the loop
        self.on_leave: list[Callable[[], None]] = []  # an adopted daemon's watch (adopt.py), ended with the job


class House:
    def __init__(self, store: StateStore, seams: Optional[Seams] = None, socket_path: str = "") -> None:
        self.store = store
        self.seams = seams or Seams()
        self.socket_path = socket_path
        self.wakeups = Wakeups((SIGTERM, SIGINT, SIGHUP, SIGUSR2))
        self.members: dict[str, Member] = {}
        self.requests: list[Callable[[], None]] = []  # from the socket, acted on between turns
        self.failures: list[str] = []  # "NAME: what went wrong", for the tests and the log
        self.looks: list[Callable[[], None]] = []  # run with the jobs' lock watch (the socket's own look)
        self._looked = 0.0
        self.pump: OutputPump
        self.duty: Optional[ClusterDuty] = None  # the cluster house's (housecluster.py): leases, beats
        self.anchor: Optional[AnchorLink] = None  # the process above us that keeps each job's descriptors (anchor.py)

    def open(self) -> None:
        self.pump = OutputPump(self.wakeups.open(), self.seams.clock)
        self.wait = self.seams.wait or self.pump.wait
        if self.duty is not None:
            self.wait = self.duty.wrap(self.wait)

    def close(self) -> None:
        for member in list(self.members.values()):
            self._fail(member, RuntimeError("the shared supervisor is ending"))
        self.pump.close()
        self.wakeups.close()

    # -- what the socket asks ----------------------------------------------------------------
    def room(self) -> Optional[str]:
        """None if one more job fits in our descriptors (its share, and a margin for a restart's
        pipes and a notifier); else why not, for the tick, which then runs it under a supervisor
        of its own. Jobs already ours (adopted, handed back by the anchor) are never refused."""
        return room(self.seams.fd_count(), self.seams.fd_limit())

    def take(self, job: Job, lock: SingletonLock, ready: Optional[Ready] = None,
             history: Optional[dict[str, Any]] = None) -> None:
        """Supervise `job`, whose lock the caller holds (its descriptors are ours from now on)."""
        if job.name in self.members:
            lock.release()
            raise ValueError(f"{job.name} is supervised here already")
        member = Member(job.name)
        seams = self.seams.for_job(reap=lambda: self._reaped_by(member), sleep=self._pause,
                                   known=lambda: self._daemons(member))
        if self.anchor is not None:
            self.anchor.wrap(member, seams)  # each daemon start hands the anchor its pipes and lock
        try:
            if bool(job.cluster) != (self.duty is not None):
                raise ValueError("a cluster job goes to the cluster house, any other to the plain one")
            cluster = self.duty.cluster_for(job) if self.duty is not None else None
            member.sup = Supervisor(job, lock, self.store, ready=ready, history=history, seams=seams,
                                    wakeups=self.wakeups, house=self.socket_path, cluster=cluster)
        except BaseException:
            lock.release()
            raise
        self.members[job.name] = member
        if self.duty is not None:
            self.duty.join(member.sup)
        try:
            member.sup.open(PumpShare(self.pump))
        except Exception as exc:
            self._fail(member, exc)
            return
        looks = [m.sup.watch.next_check for m in self.members.values() if m is not member]
        if looks:  # one wake-up looks at every lock: a newcomer joins the next look
            member.sup.watch.next_check = min(looks)
        if self.anchor is not None:
            self.anchor.taken(member)

    def stop_job(self, name: str, done: Callable[[bool], None]) -> None:
        """Stop NAME's tree and let its lock go; `done(True)` once it is gone (False: not here)."""
        member = self.members.get(name)
        if member is None:
            done(False)
            return
        member.waiting.append(done)
        member.sup.request_stop()

    def reload_job(self, name: str) -> bool:
        member = self.members.get(name)
        return member is not None and self._guard(member, member.sup.reload) is not False

    # -- the loop ----------------------------------------------------------------------------
    def run(self) -> int:
        try:
            while self.members or self.requests:
                self._turn()
        finally:
            self.close()
        return 0

    def _turn(self) -> None:
        self._signals()
        self._reap_all()
        for member in self._running():
            if member.inbox:
                self._guard(member, member.sup.life.reap)
        for member in self._running():  # a stop of a job's own (timeout, lifetime, leftovers)
            if member.sup.life.child.aside_until is not None:
                self._guard(member, self._aside, member)
        requests, self.requests = self.requests, []
        for request in requests:
            request()
        self._end_those_done()
        if not self.members:
            return
        now = self.seams.clock()
        again = False
        for member in self._running():
            again = bool(self._guard(member, member.sup.step, now)) or again
        running = self._running()
        if again or not self.members or any(m.inbox for m in running):  # an exit reaped while ending another
            return
        if running:
            self._look(min(m.sup.watch.next_check for m in running))
        wakes = [self._guard(member, member.sup.wake_at, now) for member in running]
        # An ending job: look for its tree again soon, and finish it when its grace is over.
        wakes += [min(now + ENDING_LOOK, self._ending_until(m)) for m in self._each() if m.ending_since is not None]
        # A job's stop of its own likewise (it starts again only once that stop is over).
        wakes += [min(now + ENDING_LOOK, a) for a in (m.sup.life.child.aside_until for m in running) if a is not None]
        due = min((w for w in wakes if isinstance(w, float)), default=now)
        self.wait(max(0.0, due - now))

    def _look(self, next_check: float) -> None:
        """The resident's own chores, in the wake-up in which the jobs' locks were looked at."""
        if next_check == self._looked:
            return
        self._looked = next_check
        for look in self.looks:
            try:
                look()
            except Exception:
                pass  # the next look tries again

    def _each(self) -> list[Member]:
        return list(self.members.values())

    def _running(self) -> list[Member]:
        """The jobs not on their way out."""
        return [m for m in self.members.values() if m.ending_since is None]

    def _signals(self) -> None:
        for sig in self.wakeups.take():
            for member in self._each():
                if sig in (SIGTERM, SIGINT):
                    member.sup.request_stop()
                elif sig == SIGHUP:  # logs rotated, or a command found our socket gone: look at once
                    self._guard(member, member.sup.output.reopen)
                    member.sup.watch.soon()  # every lock, then our own files (`looks`) in that wake-up
                elif sig == SIGUSR2:
                    self._guard(member, member.sup.reload)

    def _end_those_done(self) -> None:
        """Jobs whose run is over (a stop, a step-down, done). Each tree gets SIGTERM at once and
        its grace runs beside the loop: the other jobs' restarts never wait for it, and several
        stops (SIGTERM to the resident) wait side by side. The job is finished (SIGKILL to what
        is left, the state saved, the lock let go) once its tree is gone or its grace is over."""
        now = self.seams.clock()
        for member in [m for m in self._each() if m.ending_since is None and self._guard(m, m.sup.over)]:
            member.ending_since = now
            self._guard(member, self._term_tree, member)
        for member in [m for m in self._each() if m.ending_since is not None]:
            if now < self._ending_until(member) and self._guard(member, self._tree_left, member):
                continue
            if member.sup.life.child.aside_until is not None:  # its own stop first, and what follows it
                self._guard(member, member.sup.life.child.end_aside, member.sup.job, member.sup.output.note)
            if self._guard(member, member.sup.finish) is not False:
                self._leave(member)

    def _aside(self, member: Member) -> None:
        """A job's stop of its own runs beside the loop, as a stop asked over the socket does:
        finished once its tree is gone or its grace is over."""
        self._reap_all()  # a daemon that obeyed SIGTERM is a zombie until reaped
        sup = member.sup
        if not sup.life.child.aside():
            sup.life.child.end_aside(sup.job, sup.output.note)

    def _ending_until(self, member: Member) -> float:
        assert member.ending_since is not None
        return member.ending_since + (0.0 if member.sup.life.duplicate else member.sup.life.stop_grace())

    def _tree_left(self, member: Member) -> bool:
        sup = member.sup
        self._reap_all()  # a daemon that obeyed SIGTERM is a zombie until reaped
        return bool(sup.life.child.finder(sup.job)())

    def _term_tree(self, member: Member) -> None:
        sup = member.sup
        if sup.life.duplicate:
            return
        tree = sup.life.child.finder(sup.job)()
        sup.life.child.stopper.signal_all(tree, 15)
        sup.life.child.stopper.signal_all(tree, SIGCONT)
        sup.life.child.termed_at = self.seams.clock()

    # -- reaping: each exit to the job whose daemon it is -------------------------------------
    def _reap_all(self) -> None:
        exited = self.seams.reap()
        if not exited:
            return
        owners = {m.sup.life.child.pid: m for m in self.members.values() if m.sup.life.child.pid is not None}
        for pid, code in exited:
            owner = owners.get(pid)
            if owner is not None:
                owner.inbox.append((pid, code))
            # else an orphan of some job's tree (we are its subreaper), or a notifier: reaped, no more

    def _daemons(self, but: Member) -> set[int]:
        """The other jobs' daemons that we started: children of ours, whose pids no other process
        can have until we reap them. Not a forking job's followed process, nor an adopted daemon:
        another's child, reaped without our knowing, its pid anyone's since."""
        return {child.pid for child in (m.sup.life.child for m in self.members.values() if m is not but)
                if child.pid is not None and not child.following and not child.adopted}

    def _reaped_by(self, member: Member) -> list[tuple[int, int]]:
        self._reap_all()
        mine, member.inbox = member.inbox, []
        return mine

    def _pause(self, seconds: float) -> None:
        """A stop's wait between scans: every job's output keeps moving meanwhile."""
        self.wait(seconds)

    # -- isolation ---------------------------------------------------------------------------
    def _guard(self, member: Member, action: Callable[..., T], *args: Any) -> T | bool:
        """`action(*args)` for one job; an exception stops and releases that job alone (False)."""
        if member.name not in self.members:
            return False
        try:
            return action(*args)
        except Exception as exc:
            self._fail(member, exc)
            return False

    def _fail(self, member: Member, exc: BaseException) -> None:
        """A failure of ours in one job's handling: its tree is stopped, its lock released, the
        reason written to its log; the other jobs run on."""
        sup = member.sup
        what = out_of(exc) or f"{exc.__class__.__name__}: {exc}"  # EMFILE is no missing user, say
        text = (f"the shared supervisor failed on this job ({what}): "
                "its tree is stopped and its lock released; the next tick starts it again")
        self.failures.append(f"{member.name}: {text}")
        life = sup.life
        steps: list[Callable[[], None]] = [
            lambda: sup.output.note(text), lambda: life._report_ready(text),
            lambda: life.child.stop(sup.job, life.stop_grace(), "stopping: failed", True, sup.output.note),
            lambda: sup.pump.drain_all()]
        for step in steps:
            try:
                step()
            except Exception:
                pass
        sup.state.phase, sup.state.message = Phase.EXITED, text
        sup.state.pid = sup.state.pid_start = None
        self._leave(member)

    def _leave(self, member: Member) -> None:
        """The job is no longer ours: its record no longer names us (a tick that takes its lock
        must not find a live supervisor there), then its files and lock go."""
        self.members.pop(member.name, None)
        if self.anchor is not None:
            self.anchor.left(member)  # before the lock goes: the anchor's copy goes first
        for undo in member.on_leave:
            try:
                undo()
            except Exception:
                pass
        sup = member.sup
        if not sup.life.duplicate:  # a duplicate's record is the other supervisor's
            sup.state.supervisor_pid = sup.state.supervisor_start = None
            try:
                sup.keeper.save()
            except Exception:
                pass
        try:
            sup.close()
        except Exception:
            sup.lock.release()
        for done in member.waiting:
            done(True)
