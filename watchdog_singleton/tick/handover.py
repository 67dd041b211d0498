"""A shared job's tick (install --shared), once it holds NAME's lock: hand NAME to the user's shared
resident, or become that resident.

    1. connect to `.house.sock` in the user's lock folder (the peer must be our own uid) and send
       NAME with the held lock's descriptors (SCM_RIGHTS);
    2. the resident answers `taken` at once, then the readiness line a resident of its own would
       write ("ok PID" or a problem); the tick prints it as today and exits;
    3. `refused` (the resident has no descriptors left for one more job: proc/fdlimit.py): the tick
       runs NAME under a supervisor of its own, as if it were not shared, and says why in its log;
    4. no answer, or no `taken`: nothing of NAME started, so whoever holds `.house.lock` decides. The
       tick that takes it becomes the resident (detached, as today's detach does) with NAME as its
       first job; one that does not (another tick is becoming it, or one is exiting) connects again.

Once `taken` was said, the tick never starts NAME itself: if the resident then dies, its anchor
(supervisor/anchor.py, the process the becoming tick split above it) starts a new one at once that
adopts every job. Without an anchor, the daemon (if it started) holds the lock and the next tick
finds it held. That tick's line runs Python only when the resident's pid file names no live
process (cron/crontab.py); then `rescue` makes this tick a new resident with no first job, which
adopts every daemon the dead one left (supervisor/adopt.py).
"""

from __future__ import annotations

import os
import sys
import time

from .. import paths
from ..lock.flock import FlockLock, default_lock_dir
from ..supervisor.housewire import connect, house_name, receive, send, socket_path
from .becoming import HOUSE_BOOT

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing stays out of the resident supervisor's memory; annotations are strings
    from typing import Optional

    from ..job.model import Job
    from ..state.store import RunState

FIND_HOUSE_SECONDS = 10.0  # how long a tick tries to reach or become the resident (one may be starting)
TAKEN_SECONDS = 10.0  # a resident answers `taken` as soon as its loop reads the request
RETRY = 0.02
REFUSED = "refused "  # the start of find_house's answer when the resident would not take NAME


def find_house(job: Job, lock: FlockLock, root: str, history: dict[str, object]
               ) -> tuple[Optional[str], Optional[FlockLock]]:
    """(the resident's readiness line, None) once a resident took NAME (REFUSED and why: it would
    not, and NAME's lock is still ours alone); (None, the house lock) when
    this tick is to become the resident; (None, None) when none answered in FIND_HOUSE_SECONDS."""
    house_dir = default_lock_dir(root)
    cluster = bool(job.cluster)  # a cluster job goes to the cluster house (supervisor/housecluster.py)
    path = socket_path(house_dir, root, cluster)
    deadline = time.monotonic() + FIND_HOUSE_SECONDS
    while True:
        answer = offer(path, job, lock, history)
        if answer is not None:
            return answer, None
        house = FlockLock(house_dir, house_name(root, cluster))
        if house.try_acquire():
            return None, house
        if time.monotonic() >= deadline:
            return None, None
        time.sleep(RETRY)


def offer(path: str, job: Job, lock: FlockLock, history: dict[str, object]) -> Optional[str]:
    """NAME handed to the resident at `path`: its readiness line ("" if it went silent after
    taking NAME), REFUSED and why, or None if no resident took it (then nothing of NAME was started)."""
    try:
        sock = connect(path, TAKEN_SECONDS)
    except OSError:  # none there (ENOENT, ECONNREFUSED), one of another user, or one that hangs
        return None
    try:
        try:
            send(sock, {"op": "take", "job": job.to_dict(), "history": history}, lock.inheritable_fds())
            answer, fds = receive(sock)
        except OSError:
            return None
        for fd in fds:
            os.close(fd)
        if answer is not None and "refused" in answer:
            return REFUSED + str(answer["refused"])
        if answer is None or "taken" not in answer:
            return None
        sock.settimeout(max(0.0, job.settle) + 60.0)  # the start, then the settle time, then its answer
        try:
            answer, fds = receive(sock)
        except OSError:
            return ""
        for fd in fds:
            os.close(fd)
        return str(answer.get("ready", "")) if answer else ""
    finally:
        sock.close()


def rescue(job: Job, state: Optional[RunState], root: str) -> Optional[FlockLock]:
    """NAME's lock is held. If that is its daemon running on after its shared resident died, the
    house lock (this tick is to become a resident that adopts it); else None: all is well, or a live
    resident (or one being born, which adopts it) holds the house lock."""
    if job.cluster or state is None or not state.house or state.supervisor_alive() or not state.daemon_alive():
        return None  # a cluster house's watcher stops every tree it leaves: nothing to adopt
    house = FlockLock(default_lock_dir(root), house_name(root))
    return house if house.try_acquire() else None


def exec_house(job: Optional[Job], lock: Optional[FlockLock], house: FlockLock, root: str, ready_fd: int,
               history: dict[str, object], anchor: bool = True) -> None:
    """Become the shared resident (supervisor/housemain.py), NAME its first job (none: it only
    adopts). A plain resident first splits the anchor above it (supervisor/anchor.py: this process
    becomes the anchor, its child goes on; `anchor=False`: none); the cluster house splits its
    watcher instead (cluster/watcher.py), as a cluster job's own supervisor does. Then it execs the
    resident, handing over NAME's lock and the house lock."""
    from ..proc import procs
    from ..proc.children import become_subreaper
    from ..proc.spawn import close_all_but
    from ..supervisor.resident import RESIDENT_MALLOC
    from .becoming import memfd_of

    env = procs.clean_environ(dict(os.environ))  # no job's marker: it is in no job's tree
    env.update(RESIDENT_MALLOC)
    beat_fd = anchor_fd = -1
    cluster = job is not None and bool(job.cluster)
    if job is not None and job.cluster:
        from dataclasses import replace

        from ..cluster import Timing
        from ..cluster.watcher import split_watcher
        from ..supervisor.housecluster import head_for, watcher_log

        timing = Timing.for_lease(job.lease)
        become_subreaper()  # the watcher's: orphans of a dead house's trees come to it
        # Its token is empty: every process below it is the tree; each beat says the grace.
        beat_fd = split_watcher(job, replace(timing, head=head_for(timing)).capped_grace(job.grace), False,
                                token="", log=watcher_log(root))
    elif anchor:
        become_subreaper()  # the anchor's: a dead resident's daemons come to it
        anchor_fd = split_anchor(house, root, env)
    job_fd = memfd_of({"job": job.to_dict() if job is not None else None, "lock_fd": lock.fd if lock else None,
                       "dir_fd": lock.dir_fd if lock else None, "house_fd": house.fd, "house_dir_fd": house.dir_fd,
                       "house_dir": house.lock_dir, "ready_fd": ready_fd, "history": history, "beat_fd": beat_fd,
                       "anchor_fd": anchor_fd})
    keep = (*(lock.inheritable_fds() if lock else ()), *house.inheritable_fds(), ready_fd, job_fd,
            *(fd for fd in (beat_fd, anchor_fd) if fd >= 0))
    for fd in keep:
        os.set_inheritable(fd, True)
    become_subreaper()  # ours again: fork does not keep it
    close_all_but(keep)
    os.chdir("/")
    sys.stdout.flush()
    sys.stderr.flush()
    # -I -S, as a resident of its own; the cluster house needs its driver from site-packages: -I only.
    flags = ["-I"] if cluster else ["-I", "-S"]
    os.execve(sys.executable, [sys.executable, *flags, "-c", HOUSE_BOOT, paths.PACKAGE_PARENT, "--state-dir",
                               root, str(job_fd)], env)


def split_anchor(house: FlockLock, root: str, env: dict[str, str]) -> int:
    """Fork. The parent becomes the anchor (an exec, never returns), keeping the house lock and its
    end of a socketpair; the child returns the other end, to hand to the resident it becomes
    (-1: no anchor, the fork failed)."""
    import _socket

    from ..supervisor.anchor import BOOT

    ours, theirs = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        pid = os.fork()
    except OSError:  # no process to spare: a resident without an anchor, as before there was one
        ours.close()
        theirs.close()
        return -1
    if pid:
        theirs.close()
        link = ours.detach()
        assert house.fd is not None and house.dir_fd is not None
        from ..proc.spawn import close_all_but

        keep = (link, house.fd, house.dir_fd)
        close_all_but(keep)  # NAME's lock, the ready pipe, what cron left open: the resident's
        for fd in keep:
            os.set_inheritable(fd, True)
        os.chdir("/")
        argv = [sys.executable, "-I", "-S", "-c", BOOT, paths.PACKAGE_PARENT, root, str(pid), str(link),
                str(house.fd), str(house.dir_fd), house.lock_dir]
        try:
            os.execve(sys.executable, argv, env)
        except OSError:  # no new interpreter (out of memory, a vanished venv): anchor from this one
            from ..supervisor.anchor import main

            os._exit(main(argv[6:]))
    ours.close()
    return int(theirs.detach())
