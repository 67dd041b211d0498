"""Adoption: a new supervisor takes over the daemons a dead one (kill -9, the OOM killer) left.

    adopted = adopt_orphans(house, root)   # a new shared resident, at its start, before its loop
    adopt_own(sup, state, inbox)           # a job's own supervisor, from a tick (resident.py)

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
- Its output went to pipes whose reader was the dead resident. Until the adoption its writes fail:
  SIGPIPE, which ends most daemons (then it is restarted with new pipes), or EPIPE for one that
  ignores SIGPIPE, and what it meant to write is lost. The adoption reads those pipes again
  (`reattach`): opening /proc/PID/fd/1 (and 2) gives a new read end of the same pipe, as for a
  FIFO, so its writes work again and go into its log files. Only the pipes its supervisor made
  are opened (their inodes are in the run state); anything else at fd 1 or 2 is left alone.

A periodic job is not adopted: its run ends on its own, and the next tick starts the job again.

A job's own supervisor (not shared) is adopted the same way, one job at a time: its crontab line
finds the lock held and the `PID START` file of its supervisor (lock/supfile.py) naming no live
process; the launcher takes that file's flock (so two ticks never both adopt), checks the run state
(`orphan`) and becomes the job's supervisor in adopted mode (`adopt_own`): a `Borrowed` lock, the
daemon its child of record, its pipes read again, its end watched through a pidfd in its own poll.
"""

from __future__ import annotations

import os
import stat

from ..lock.flock import STALE_SECONDS, FlockLock
from ..proc import procs
from ..proc.stop import stop_job
from ..state.phases import Phase
from ..state.store import CARRIED
from ..timefmt import unix_time
from .pump import OutputPump

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing stays out of the resident supervisor's memory; annotations are strings
    from typing import Callable, Optional

    from ..job.model import Job
    from ..lock.flock import SingletonLock
    from ..proc.tree import Stopper
    from ..state.store import RunState
    from .core import Supervisor
    from .house import House, Member
    from .seams import Seams

    MakeLock = Callable[[str, str], SingletonLock]
    FdPath = Callable[[int, int], str]

EBUSY = 16  # errno's number; the errno module stays out of the resident


def orphan(job: Job, state: Optional[RunState], alive: Callable[[Optional[int], Optional[int], Optional[str]], bool]
           ) -> bool:
    """Whether `state`, the record of `job` (a daemon kept alive, neither periodic nor a cluster
    job's), names a dead supervisor and a daemon that runs on (pid, start time, this boot)."""
    if state is None or job.periodic or job.cluster:
        return False
    return not alive(state.supervisor_pid, state.supervisor_start, state.boot_id) and \
        alive(state.pid, state.pid_start, state.boot_id)


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
        # A live supervisor: supervised (or a tick holds it for a moment).
        if job is not None and job.shared and state is not None and state.house and orphan(job, state, seams.alive):
            found.append((job, state))
    return found


def proc_fd_path(pid: int, fd: int) -> str:
    return f"/proc/{pid}/fd/{fd}"


def adopt_orphans(house: House, root: str, make_lock: MakeLock = FlockLock,
                  fd_path: FdPath = proc_fd_path) -> list[str]:
    """Adopt every orphan of `root` (see the module docstring); the names adopted."""
    adopted = []
    for job, state in orphans(house, root):
        try:
            if adopt(house, job, state, make_lock, fd_path):
                adopted.append(job.name)
        except Exception as exc:  # that job stays as it was (unsupervised); the others are adopted
            house.failures.append(f"{job.name}: could not adopt it: {exc}")
    return adopted


def adopt(house: House, job: Job, state: RunState, make_lock: MakeLock = FlockLock,
          fd_path: FdPath = proc_fd_path) -> bool:
    """Make the running daemon of `state` a member of `house`, watched until it ends."""
    assert state.pid is not None and state.pid_start is not None

    def free() -> None:
        member = house.members.get(job.name)
        free_lock(house.seams, job, member.sup.life.child.stopper if member is not None else None)

    lock = Borrowed(make_lock(job.lock_dir, job.name), free)
    house.take(job, lock, history={key: getattr(state, key) for key in CARRIED})
    member = house.members.get(job.name)
    if member is None:
        return False  # it failed to open; house.take said why in its log
    cancel = took_over(member.sup, state, house.pump, member.inbox, fd_path, shared=True)
    if cancel is not None:
        member.on_leave.append(cancel)
    return True


def adopt_own(sup: Supervisor, state: RunState, inbox: list[tuple[int, int]],
              fd_path: FdPath = proc_fd_path) -> None:
    """`sup`, a job's own supervisor started by a tick that found `state`'s daemon running on with
    its supervisor dead (`orphan`), supervises that daemon from now on (the module docstring);
    its end comes to `inbox`, which the supervisor's reaping reads (`reaping_with`)."""
    pump = sup.pump
    assert isinstance(pump, OutputPump)  # a supervisor of its own polls its own pump
    took_over(sup, state, pump, inbox, fd_path, shared=False)


def took_over(sup: Supervisor, state: RunState, pump: OutputPump, inbox: list[tuple[int, int]], fd_path: FdPath,
              shared: bool) -> Optional[Callable[[], None]]:
    """The adoption proper, for the shared resident and a supervisor of its own alike: the daemon
    our child of record, its pipes read again, its end watched; the watch's cancel."""
    pid, start = state.pid, state.pid_start
    assert pid is not None and start is not None
    what = "shared supervisor" if shared else "supervisor"
    running(sup, state, pid, start,
            message=(f"adopted from {'a' if shared else 'its'} {what} that died (pid {state.supervisor_pid}): how the "
                     "daemon ends will not be known, and what it wrote since that supervisor died is lost"),
            note=f"adopted running pid {pid}: its {what} (pid {state.supervisor_pid}) died")
    reattach(sup, pid, fd_path, f"its {what}")
    return watch_end(sup, pump, inbox, pid, start)


def reaping_with(inbox: list[tuple[int, int]], reap: Callable[[], list[tuple[int, int]]] = procs.reap_exited
                 ) -> Callable[[], list[tuple[int, int]]]:
    """A supervisor of its own's reaping (`Seams.reap`): its children's exits, and the end of an
    adopted daemon (no child of ours) that `watch_end` put in `inbox`."""
    def both() -> list[tuple[int, int]]:
        done = list(reap())
        if inbox:
            done += inbox
            inbox.clear()
        return done
    return both


def watch_member(house: House, member: Member, pid: int, start: Optional[int]) -> None:
    """A shared job's adopted daemon: its end to the member's inbox, the watch ended with the job."""
    cancel = watch_end(member.sup, house.pump, member.inbox, pid, start)
    if cancel is not None:
        member.on_leave.append(cancel)


def watch_end(sup: Supervisor, pump: OutputPump, inbox: list[tuple[int, int]], pid: int, start: Optional[int]
              ) -> Optional[Callable[[], None]]:
    """Its end, seen through a pidfd in `pump`'s poll (it is not our child), goes to `inbox` with an
    unknown status: for a tick's adoption, and for the anchor's once the anchor is gone. The
    watch's cancel; None if it had ended already (its end is in `inbox`)."""
    watch = sup.seams.watch_exit or pidfd_watch(pump)
    ended = Ended(sup, inbox, pid)
    try:
        cancel = watch(pid, ended)
    except ProcessLookupError:
        ended()
        return None
    if start is not None and sup.seams.start_time(pid) != start:  # it ended before the watch began, its pid another's
        cancel()
        ended()
        return None
    return cancel


def running(sup: Supervisor, state: RunState, pid: int, start: Optional[int], message: str, note: str) -> None:
    """`sup` supervises `pid`, the running daemon of `state` (a dead supervisor's): no child of
    ours, so its leftovers are always looked for in /proc when it ends (Child.adopted). A tick's
    adoption and the anchor's hand-over (anchorlink.py) both come through here."""
    # Its run began when it started, not now: --max-lifetime and a quick exit count from then.
    began = unix_time(state.started_at) if state.pid == pid and state.started_at else None
    age = max(0.0, sup.seams.wall() - began) if began is not None else 0.0
    sup.life.child.pid, sup.life.child.started, sup.life.child.adopted = pid, sup.seams.clock() - age, True
    if sup.life.periodic is None and sup.job.max_lifetime > 0:
        sup.life.deadline = sup.life.child.started + sup.job.max_lifetime
    mine = sup.state
    mine.pid, mine.pid_start, mine.started_at = pid, start, state.started_at
    if state.pid == pid:  # the same daemon: its output pipes on record, for a later adoption to read
        mine.stdout_pipe, mine.stderr_pipe = state.stdout_pipe, state.stderr_pipe
    mine.message = message
    sup.life.enter(Phase.RUNNING)
    sup.output.note(note)


def reattach(sup: Supervisor, pid: int, fd_path: FdPath = proc_fd_path, who: str = "its shared supervisor") -> None:
    """Read the adopted daemon's stdout and stderr into its log files again, through a new read end
    of each pipe its supervisor made; said in its log either way."""
    sinks = ((1, "stdout", sup.state.stdout_pipe, sup.output.out), (2, "stderr", sup.state.stderr_pipe, sup.output.err))
    read, left = [], []
    for number, what, inode, sink in sinks:
        if inode is None or sink is None:
            left.append(f"its {what} (no pipe of its supervisor's on record)")
            continue
        try:
            fd = open_pipe(fd_path(pid, number), inode)
        except OSError as exc:
            left.append(f"its {what} ({exc.strerror or exc})")
            continue
        if fd is None:
            left.append(f"its {what} (no longer the pipe its supervisor made)")
            continue
        sup.pump.watch(fd, sink)
        read.append(what)
    if read:
        sup.output.note(f"reading its {' and '.join(read)} again: what it wrote since {who} "
                        "died is lost (those writes failed)")
    if left:
        sup.output.note(f"not read: {', '.join(left)}; its writes there fail (SIGPIPE or EPIPE) until it "
                        "is started again")


def open_pipe(path: str, inode: int) -> Optional[int]:
    """A new read end (non-blocking) of the pipe at `path` (a /proc/PID/fd link) if it is the pipe
    `inode`; None if it is anything else. A same-user process's pipe opens like a FIFO."""
    if not is_pipe(os.stat(path), inode):  # nothing else is opened: a device's open can have effects
        return None
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    if not is_pipe(os.fstat(fd), inode):  # it changed between the look and the open
        os.close(fd)
        return None
    return fd


def is_pipe(info: os.stat_result, inode: int) -> bool:
    return stat.S_ISFIFO(info.st_mode) and info.st_ino == inode


class Ended:
    """The adopted daemon `pid` ended: its exit, with an unknown status, goes to `inbox` (the next
    reap acts on it as on any exit: the house's next turn, or a supervisor of its own's loop)."""

    __slots__ = ("sup", "inbox", "pid", "done")

    def __init__(self, sup: Supervisor, inbox: list[tuple[int, int]], pid: int) -> None:
        self.sup, self.inbox, self.pid, self.done = sup, inbox, pid, False

    def __call__(self) -> None:
        if self.done:
            return
        self.done = True
        if self.sup.life.child.pid == self.pid:
            self.inbox.append((self.pid, procs.UNKNOWN_EXIT))


def free_lock(seams: Seams, job: Job, stopper: Optional[Stopper]) -> None:
    """Stop whatever still holds `job`'s lock once its adopted daemon ended: the processes that
    carry its token, and ours that hold the file open (a lock inherited by one that cleared its
    environment). Never the supervisor itself, nor the shared resident or its anchor
    (procs.is_infrastructure), which hold it too."""
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
