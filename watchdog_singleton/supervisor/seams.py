"""What the supervisor touches of the world, in one object that tests replace (tests/kits/fakeworld.py):
the clocks, starting, listing, reaping and signalling processes, /proc, the job's definition on
disk, folders, log files, the terminal of a passthrough run, and (the shared resident) the end of a
daemon that is not our child."""

from __future__ import annotations

import os
import time

from ..files import ensure_dir
from ..job.model import JobStore
from ..proc import procs
from ..proc.children import has_children, own_children
from ..proc.fdlimit import in_use, soft_limit
from ..proc.spawn import spawn
from .logsink import LogSink

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing stays out of the resident supervisor's memory; annotations are strings
    from typing import Callable, Optional

    from ..job.model import Job
    from ..proc.spawn import Spawned

    WatchExit = Callable[[int, Callable[[], None]], Callable[[], None]]


def load_job(root: str, name: str) -> Optional[Job]:
    return JobStore(root).load(name)


def to_stderr(text: str) -> None:
    os.write(2, f"watchdog-singleton: {text}\n".encode())


class Seams:
    """What the supervisor touches of the world; tests pass fakes (clock, processes, waiting)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time,
                 spawn: Callable[..., Spawned] = spawn, scan: Callable[[], dict[int, procs.Proc]] = procs.scan,
                 reap: Callable[[], list[tuple[int, int]]] = procs.reap_exited,
                 has_children: Callable[[], bool] = has_children,
                 children: Callable[[], Optional[list[int]]] = own_children,
                 wait: Optional[Callable[[float], None]] = None, send: Callable[[int, int], None] = os.kill,
                 sleep: Callable[[float], None] = time.sleep, pid: int = 0,
                 lease_clock: Optional[Callable[[], float]] = None, threads: bool = True,
                 boot_id: Callable[[], str] = procs.boot_id,
                 start_time: Callable[[int], Optional[int]] = procs.start_time,
                 load_job: Callable[[str, str], Optional[Job]] = load_job,
                 ensure_dir: Callable[[str], None] = ensure_dir,
                 open_sink: Callable[[str, int, int], LogSink] = LogSink,
                 stderr: Callable[[str], None] = to_stderr, strict: bool = False, house: bool = False,
                 alive: Callable[[Optional[int], Optional[int], Optional[str]], bool] = procs.is_alive,
                 watch_exit: Optional[WatchExit] = None, fd_count: Callable[[], int] = in_use,
                 fd_limit: Callable[[], Optional[int]] = soft_limit) -> None:
        self.clock = clock
        self.wall = wall
        self.spawn = spawn
        self.scan = scan
        self.reap = reap
        self.has_children = has_children  # False: no child left, so nothing of the tree either
        self.children = children  # our children's pids without a scan of /proc; None: only a scan tells
        self.wait = wait  # None: sleep in the output pump's poll
        self.send = send
        self.sleep = sleep
        self.pid = pid or os.getpid()
        self.lease_clock = lease_clock  # None: CLOCK_BOOTTIME (leases.keeper)
        self.threads = threads  # False: a cluster lease is renewed inline, in the supervisor's tick
        self.boot_id = boot_id  # /proc: this boot, and a pid's start time, for the run state
        self.start_time = start_time
        self.load_job = load_job  # (state root, name): the definition on disk, re-read on SIGUSR2
        self.ensure_dir = ensure_dir
        self.open_sink = open_sink  # (path, max bytes, backups): a log file
        self.stderr = stderr  # a line for the terminal of a passthrough run
        self.strict = strict  # a phase change the table does not allow raises (tests), else is noted
        # The shared resident (house.py): its other children are other jobs' daemons, so a job's
        # tree is its daemon, what descends from it and what carries its token; never all of `pid`'s.
        self.house = house
        self.alive = alive  # (pid, start, boot): that process runs (not a zombie); another resident's, say
        # (pid, on_exit) -> cancel: call on_exit() once the process `pid` (not our child) has ended;
        # ProcessLookupError if it is gone already. None: a pidfd in the shared resident's poll (adopt.py).
        self.watch_exit = watch_exit
        self.fd_count = fd_count  # the descriptors we hold, and our soft limit: the shared resident's room
        self.fd_limit = fd_limit
        self.known: Callable[[], set[int]] = set  # the shared resident's children it accounts for (for_job)

    def for_job(self, reap: Callable[[], list[tuple[int, int]]], sleep: Callable[[float], None],
                known: Callable[[], set[int]]) -> Seams:
        """A copy for one job of the shared resident: reaping hands it only its own share of what
        exited, waiting within a stop keeps moving every job's output, and `known` names the
        resident's children that are no job's leftovers (the other jobs' daemons)."""
        copy = Seams.__new__(Seams)
        copy.__dict__.update(self.__dict__)
        copy.reap, copy.sleep, copy.house, copy.known = reap, sleep, True, known
        return copy
