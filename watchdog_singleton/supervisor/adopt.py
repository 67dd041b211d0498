"""Adoption: a new shared resident takes over the daemons a dead one (kill -9, the OOM killer) left.

    adopted = adopt_orphans(house, root)   # at the resident's start, before its loop

An orphan is a shared job whose recorded supervisor is dead while its recorded daemon (pid and
start time, this boot) runs on: the daemon holds the job's lock (it inherited it), so no tick can
start the job, and nothing would restart it or read its output. The new resident makes it a member
like any other (stop, restart, uninstall and reload reach it through the socket; its tree is found
by its daemon and its token), with these differences while that daemon lives:

- It is not our child. Its end is seen through a pidfd, which becomes readable when it exits, and
  how it ended is unknown (waitpid is its parent's): the log, the state and `status` say so, and the
  restart policy counts it as a failure (`on-failure` and `always` start it again, `never` does not).
- Its lock is the daemon's (`Borrowed`). When the daemon ends, what is left of its tree is stopped
  (the member's ordinary leftover stop, by its token), and the lock is taken at the restart; should
  something still hold it, whatever carries the job's token or holds the file is stopped first.
- Its output went to pipes whose reader was the dead resident: what it wrote since is gone, and its
  next write gets SIGPIPE (EPIPE if it ignores that), which ends most daemons; then it is restarted
  with new pipes, into its log files again.

A periodic job is not adopted: its run ends on its own, and the next tick starts the job again.
"""

from __future__ import annotations

import os

from ..lock.flock import STALE_SECONDS, FlockLock
from ..proc import procs
from ..proc.stop import stop_job
from ..state.phases import Phase
from ..state.store import CARRIED

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing stays out of the resident supervisor's memory; annotations are strings
    from typing import Callable

    from ..job.model import Job
    from ..lock.flock import SingletonLock
    from ..state.store import RunState
    from .house import House, Member
    from .pump import OutputPump

    MakeLock = Callable[[str, str], SingletonLock]

EBUSY = 16  # errno's number; the errno module stays out of the resident


def orphans(house: House, root: str) -> list[tuple[Job, RunState]]:
    """The shared jobs of `root` whose daemon runs on without a live supervisor, oldest name first."""
    seams, found = house.seams, []
    for name in house.store.names():
        if name in house.members:
            continue
        try:
            state = house.store.load(name)
            job = seams.load_job(root, name)
        except Exception:  # one unreadable file never keeps the others from being adopted
            continue
        # A cluster job is never adopted: its lease is its own house's, whose watcher ends its tree.
        if state is None or job is None or not job.shared or job.periodic or job.cluster or not state.house:
            continue
        if seams.alive(state.supervisor_pid, state.supervisor_start, state.boot_id):
            continue  # supervised (or a tick holds it for a moment)
        if seams.alive(state.pid, state.pid_start, state.boot_id):
            found.append((job, state))
    return found


def adopt_orphans(house: House, root: str, make_lock: MakeLock = FlockLock) -> list[str]:
    """Adopt every orphan of `root` (see the module docstring); the names adopted."""
    adopted = []
    for job, state in orphans(house, root):
        try:
            if adopt(house, job, state, make_lock):
                adopted.append(job.name)
        except Exception as exc:  # that job stays as it was (unsupervised); the others are adopted
            house.failures.append(f"{job.name}: could not adopt it: {exc}")
    return adopted


def adopt(house: House, job: Job, state: RunState, make_lock: MakeLock = FlockLock) -> bool:
    """Make the running daemon of `state` a member of `house`, watched until it ends."""
    seams = house.seams
    pid, start = state.pid, state.pid_start
    assert pid is not None and start is not None
    watch = seams.watch_exit or pidfd_watch(house.pump)
    lock = Borrowed(make_lock(job.lock_dir, job.name), lambda: free_lock(house, job))
    house.take(job, lock, history={key: getattr(state, key) for key in CARRIED})
    member = house.members.get(job.name)
    if member is None:
        return False  # it failed to open; house.take said why in its log
    sup = member.sup
    sup.life.child.pid, sup.life.child.started, sup.life.child.adopted = pid, seams.clock(), True
    mine = sup.state
    mine.pid, mine.pid_start, mine.started_at = pid, start, state.started_at
    mine.message = (f"adopted from a shared supervisor that died (pid {state.supervisor_pid}): how the daemon "
                    "ends will not be known, and what it wrote since that supervisor died is lost")
    sup.life.enter(Phase.RUNNING)
    sup.output.note(f"adopted running pid {pid}: its shared supervisor (pid {state.supervisor_pid}) died")
    ended = Ended(member, pid)
    try:
        cancel = watch(pid, ended)
    except ProcessLookupError:
        ended()
        return True
    member.on_leave.append(cancel)
    if seams.start_time(pid) != start:  # it ended before the watch began, and its pid went to another
        cancel()
        ended()
    return True


class Ended:
    """The adopted daemon `pid` ended: its exit, with an unknown status, goes to the member's inbox
    (the house's next turn acts on it as on any exit it reaped)."""

    __slots__ = ("member", "pid", "done")

    def __init__(self, member: Member, pid: int) -> None:
        self.member, self.pid, self.done = member, pid, False

    def __call__(self) -> None:
        if self.done:
            return
        self.done = True
        if self.member.sup.life.child.pid == self.pid:
            self.member.inbox.append((self.pid, procs.UNKNOWN_EXIT))


def free_lock(house: House, job: Job) -> None:
    """Stop whatever still holds `job`'s lock once its adopted daemon ended: the processes that
    carry its token, and ours that hold the file open (a lock inherited by one that cleared its
    environment). Never the resident or its anchor (procs.is_infrastructure), which hold it too."""
    seams = house.seams
    member = house.members.get(job.name)
    stopper = member.sup.life.child.stopper if member is not None else None
    stop_job(job.lock_path, job.grace, holders=job.lock_path, scan=seams.scan, stopper=stopper,
             spare=lambda pid: pid == seams.pid or procs.is_infrastructure(pid))  # the anchor holds it too


class Borrowed:
    """An adopted job's lock: its daemon's, not ours, until that daemon ends; taken at the restart
    (`inheritable_fds`, which the daemon's start asks for). Until then there is nothing of ours to
    look after at its path."""

    def __init__(self, lock: SingletonLock, free: Callable[[], None]) -> None:
        self.lock = lock
        self.free = free
        self.path = lock.path
        self.held = False

    def try_acquire(self) -> bool:
        self.held = self.held or self.lock.try_acquire()
        return self.held

    def inheritable_fds(self) -> tuple[int, ...]:
        if not self.try_acquire():
            self.free()
            if not self.try_acquire():
                raise OSError(EBUSY, f"its lock {self.path} is still held, by no process of its tree")
        return self.lock.inheritable_fds()

    def still_ours(self) -> bool:
        return not self.held or self.lock.still_ours()

    def repair(self) -> str:
        return self.lock.repair()

    def refresh(self, older_than: float = STALE_SECONDS) -> None:
        if self.held:
            self.lock.refresh(older_than)

    def release(self) -> None:
        if self.held:
            self.held = False
            self.lock.release()


def pidfd_watch(pump: OutputPump) -> Callable[[int, Callable[[], None]], Callable[[], None]]:
    """The real `Seams.watch_exit`: a pidfd in the resident's one poll, readable once `pid` exits."""
    def watch(pid: int, on_exit: Callable[[], None]) -> Callable[[], None]:
        fd = os.pidfd_open(pid)  # ProcessLookupError: gone already
        open_fds = [fd]

        def cancel() -> None:
            if open_fds:
                open_fds.clear()
                pump.unlisten(fd)
                os.close(fd)

        def fire() -> None:
            cancel()
            on_exit()

        pump.listen(fd, fire)
        return cancel

    return watch
