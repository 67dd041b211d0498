"""The resident supervisor's entry point, exec'd by the launcher once it holds NAME's lock.

    python -I -S -c BOOT PACKAGE_PARENT --state-dir ROOT NAME JOB_FD

A fresh interpreter that loads only what supervising needs, so the process that stays beside
the daemon for its whole life costs about what a bare interpreter does. JOB_FD is a memfd
holding the job and the hand-over (lock descriptors, where to report readiness), marshalled:
marshal is built in, so reading it loads nothing.
"""

from __future__ import annotations

import marshal
import os
import sys

from ..errors import FAILED
from ..files import read_to_end
from ..job.model import Job
from ..lock.flock import FlockLock
from ..lock.supfile import SupervisorFile
from ..proc import procs
from ..state.store import RunState, StateStore
from .core import Supervisor
from .seams import Seams

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing stays out of the resident supervisor's memory; annotations are strings
    from typing import Any, Callable, Optional

    from ..lock.flock import SingletonLock


# Set by the launcher in our environment, read by glibc at our start.
RESIDENT_MALLOC = {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_ARENA_MAX": "1"}


def ready_text(supervisor: Optional[Supervisor], problem: Optional[str]) -> str:
    """What whoever waits for the start is told: "ok PID" (the daemon runs), "ok supervisor PID"
    (a periodic job's supervisor waits for its first due time), or the problem."""
    if problem is None and supervisor is not None and supervisor.periodic is not None and not supervisor.state.pid:
        problem = f"ok supervisor {os.getpid()}"
    return problem or f"ok {(supervisor.state.pid if supervisor is not None else None) or os.getpid()}"


def hold_supfile(job: Job, hand_over: dict[str, Any]) -> Optional[SupervisorFile]:
    """The `PID START` file whose flock the launcher took for us (lock/supfile.py): kept for our
    life, never the daemon's, and stamped with us. None: a job without one (shared, cluster, ad hoc)."""
    if hand_over.get("sup_fd") is None:
        return None
    held = SupervisorFile(job.lock_dir, job.name)
    held.lock.fd, held.lock.dir_fd = hand_over["sup_fd"], hand_over["sup_dir_fd"]
    for fd in held.inheritable_fds():
        os.set_inheritable(fd, False)
    me = os.getpid()
    held.stamp(me, procs.start_time(me))
    return held


def adopting(job: Job, lock: SingletonLock, hand_over: dict[str, Any], holder: list[Supervisor],
             seams: Optional[Seams] = None) -> tuple[SingletonLock, Optional[Seams], Optional[Callable[[], None]]]:
    """With "adopt" in the hand-over (the run state of a daemon whose supervisor died, tick/launch.py):
    the lock to hold (`Borrowed`: the daemon's), `seams` (new ones by default) whose reaping also hears
    the adopted daemon's end, and the adoption, for once the supervisor's pump is open
    (supervisor/adopt.py); `holder` gets the supervisor once it is made."""
    if not hand_over.get("adopt"):
        return lock, seams, None
    from .adopt import Borrowed, adopt_own, free_lock, reaping_with

    state = RunState.from_dict(hand_over["adopt"])
    inbox: list[tuple[int, int]] = []
    seams = seams or Seams()
    seams.reap = reaping_with(inbox, seams.reap)

    def free() -> None:
        assert seams is not None
        free_lock(seams, job, holder[0].life.child.stopper if holder else None)

    return Borrowed(lock, free), seams, lambda: adopt_own(holder[0], state, inbox)


def main(argv: list[str]) -> int:
    _, root, name, job_fd = argv
    for key in RESIDENT_MALLOC:  # ours, read by glibc at our start; not the daemon's
        os.environ.pop(key, None)
    hand_over = marshal.loads(read_to_end(int(job_fd)))
    job = Job.from_dict(hand_over["job"])
    lock = FlockLock(job.lock_dir, job.name)
    lock.fd, lock.dir_fd = hand_over["lock_fd"], hand_over["dir_fd"]
    for fd in lock.inheritable_fds():
        os.set_inheritable(fd, False)  # the daemon gets them through spawn's pass_fds
    supfile = hold_supfile(job, hand_over)
    holder: list[Supervisor] = []
    held, seams, adopt = adopting(job, lock, hand_over, holder)
    ready_fd = hand_over["ready_fd"]
    beat_fd = hand_over.get("beat_fd", -1)  # a cluster job's: to its watcher, our parent (cluster/watcher.py)
    if beat_fd >= 0:
        os.set_inheritable(beat_fd, False)  # the watcher's EOF is our death, never the daemon's
    if ready_fd >= 0:
        os.set_inheritable(ready_fd, False)  # else the daemon would hold it and nobody hear EOF

    def ready(problem: Optional[str]) -> None:
        nonlocal ready_fd
        if ready_fd < 0:
            return
        try:
            os.write(ready_fd, ready_text(None if problem else supervisor, problem).encode())
            os.close(ready_fd)
        except OSError:
            pass  # whoever waited is gone
        ready_fd = -1

    try:
        cluster = None
        if job.cluster:
            from ..cluster import Timing
            from ..cluster.engines import open_cluster

            cluster = open_cluster(job.cluster, Timing.for_lease(job.lease))  # connects at its first ask
        supervisor = Supervisor(job, held, StateStore(root), adhoc=hand_over["adhoc"], cluster=cluster,
                                passthrough=hand_over["passthrough"],
                                inherit_env=dict(os.environ) if hand_over["adhoc"] else None,
                                ready=ready if ready_fd >= 0 else None, history=hand_over["history"],
                                note=hand_over.get("note", ""), seams=seams, supfile=supfile)
        holder.append(supervisor)
        if supervisor.guard is not None and beat_fd >= 0:
            from ..cluster.watcher import beat

            supervisor.guard.keeper.on_deadline = lambda deadline: beat(beat_fd, deadline)
        if adopt is not None:
            def adopted() -> None:
                assert adopt is not None
                adopt()
                ready(None)  # "ok PID": the adopted daemon runs under us
            return supervisor.run(adopted)
        return supervisor.run()
    except Exception as exc:  # e.g. a log file that is not ours: one line for whoever waits
        message = str(exc) or exc.__class__.__name__
        ready(f"{name}: the supervisor could not run: {message}")
        if ready_fd < 0 and sys.stderr is not None:
            print(f"watchdog-singleton: {name}: {message}", file=sys.stderr)
        return FAILED
