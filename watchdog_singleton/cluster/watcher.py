"""A cluster job's watcher: its tree never outlives the supervisor's ability to renew the lease.

    beat_fd = split_watcher(job)   # in the launcher, just before it becomes the supervisor: the
                                   # parent becomes the watcher; this child goes on to the supervisor
    beat(beat_fd, give_up_at)      # the supervisor, at each grant and renew (CLOCK_BOOTTIME)

The watcher is the supervisor's parent and, like it, a child subreaper. When the supervisor
dies, everything below it (the daemon, and what it double-forked, setsid'd or started with
`env -i`, which carries no marker) re-parents to the watcher: the processes below the watcher
are the whole tree, found by parent links alone. It stops that tree (SIGTERM, the holder's
capped grace, SIGKILL; tree.Stopper) when
- the beat pipe reaches EOF: the supervisor died (the OOM killer's SIGKILL);
- the last give-up deadline passed with no newer one: the supervisor is stopped (SIGSTOP) or
  hung, and the tree must be gone before the lease can expire on the database. A supervisor
  that can still act stops the tree itself at that same moment.
It never signals the supervisor, and it passes SIGTERM, SIGINT and SIGHUP on to it (in the
foreground, the shell's child is the watcher); it exits with the supervisor's exit code.

The shared resident of cluster jobs (supervisor/housecluster.py) has a watcher too: its token is
empty, so everything below the watcher is the tree (every job's, whatever their tokens), and each
beat carries the grace to use with the deadline ("DEADLINE GRACE"), which the resident computes
from all of its jobs' leases.

Why a process of its own and not PR_SET_PDEATHSIG or a PID namespace: a death signal reaches
only the daemon (not what it started), and neither notices a supervisor that is stopped
rather than dead; unprivileged user namespaces are not on every HPC host, and PIDs inside one
are not the host's. The watcher is a fresh `python -I -S` that loads only this module, procs
and tree: about 3 MB of private memory, half of what a fork of the launcher keeps.
"""

from __future__ import annotations

import _signal
import os
import sys
import time

from .. import files, paths
from ..errors import SIGNALLED
from ..proc import procs, tree

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing stays out of the watcher's memory; annotations are strings
    from typing import Callable, Optional

    from ..job.model import Job

INF = float("inf")
SIGTERM, SIGINT, SIGHUP = _signal.SIGTERM, _signal.SIGINT, _signal.SIGHUP
BOOT = ("import sys; sys.path.append(sys.argv[1]); from watchdog_singleton.cluster.watcher import main; "
        "sys.exit(main(sys.argv[2:]))")


def boottime() -> float:
    """CLOCK_BOOTTIME, the clock of the supervisor's deadlines (leases.keeper)."""
    try:
        return time.clock_gettime(time.CLOCK_BOOTTIME)
    except (AttributeError, OSError):
        return time.monotonic()


def beat(fd: int, deadline: float, grace: Optional[float] = None) -> None:
    """The supervisor's side: the tree may live until `deadline` unless a newer one follows (and
    is then stopped with `grace`, if given, instead of the watcher's own). One short write
    (atomic in a pipe); a full pipe or a gone watcher costs the supervisor nothing."""
    line = f"{deadline:.6f}" if grace is None else f"{deadline:.6f} {grace:.6f}"
    try:
        os.write(fd, f"{line}\n".encode())
    except OSError:
        pass


class Watch:
    """What the beats and the clock say, apart from processes: tests drive it in simulated time."""

    def __init__(self) -> None:
        self.deadline = INF  # nothing to guard until the first grant
        self.acted_on: Optional[float] = None  # the passed deadline whose stop was done
        self.hung_up = False  # EOF: the supervisor is gone
        self.grace: Optional[float] = None  # the last beat's grace, if it said one
        self._partial = b""

    def feed(self, data: bytes) -> None:
        """Bytes read from the beat pipe; b"" is EOF."""
        if not data:
            self.hung_up = True
            return
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            try:
                fields = [float(field) for field in line.split()]
            except ValueError:
                continue
            if fields:
                self.deadline = fields[0]
                self.grace = fields[1] if len(fields) > 1 else self.grace

    def due(self, now: float) -> bool:
        """Whether the tree must be stopped now."""
        return self.hung_up or (now >= self.deadline and self.acted_on != self.deadline)

    def superseded(self, now: float) -> bool:
        """A newer grant arrived while we stopped for a passed deadline: that stop is over."""
        return not self.hung_up and self.deadline > now

    def timeout(self, now: float) -> Optional[float]:
        """How long to wait for the next beat; None: until one comes."""
        if self.hung_up:
            return 0.0
        if self.deadline == INF or self.acted_on == self.deadline:
            return None
        return max(0.0, self.deadline - now)


def read_beats(fd: int) -> Callable[[Optional[float]], Optional[bytes]]:
    """The real pipe: what arrived within `timeout` seconds (b"" at EOF), or None."""
    import select

    poller = select.poll()
    poller.register(fd, select.POLLIN | select.POLLHUP)

    def read(timeout: Optional[float]) -> Optional[bytes]:
        if not poller.poll(None if timeout is None else max(0, int(timeout * 1000 + 0.999))):
            return None
        try:
            return os.read(fd, 4096)
        except BlockingIOError:
            return None
    return read


def reaper(supervisor: int, exited: dict[int, int]) -> Callable[[], None]:
    """Reap every exited child (the supervisor, and the tree's orphans once it is gone)."""
    def reap() -> None:
        for pid, code in procs.reap_exited():
            if pid == supervisor:
                exited[pid] = code
    return reap


class Watcher:
    def __init__(self, supervisor: int, read: Callable[[Optional[float]], Optional[bytes]], token: str,
                 grace: float, note: Callable[[str], None], *, me: int = 0,
                 clock: Callable[[], float] = boottime, scan: Callable[[], dict[int, procs.Proc]] = procs.scan,
                 send: Callable[[int, int], None] = os.kill, sleep: Callable[[float], None] = time.sleep,
                 reap: Optional[Callable[[], None]] = None, exited: Optional[dict[int, int]] = None) -> None:
        self.supervisor = supervisor
        self.read = read
        self.token = token
        self.grace = grace
        self.note = note
        self.me = me or os.getpid()
        self.clock = clock
        self.scan = scan
        self.exited: dict[int, int] = exited if exited is not None else {}
        self.reap = reap or reaper(supervisor, self.exited)
        self.stopper = tree.Stopper(send=send, clock=clock, sleep=sleep, reap=self.reap)
        self.watch = Watch()

    def run(self) -> int:
        """Watch until the supervisor is gone and its tree with it; its exit code."""
        watch = self.watch
        while not watch.hung_up:
            now = self.clock()
            if watch.due(now):
                watch.acted_on = watch.deadline
                self._stop(f"no renew of the cluster lease by its give-up deadline (the supervisor, pid "
                           f"{self.supervisor}, is {self._supervisor_state()})", abortable=True)
                continue
            self._take(self.read(watch.timeout(now)))
            self.reap()
        if self.supervisor not in self.exited:
            self.reap()
        how = procs.exit_text(self.exited[self.supervisor]) if self.supervisor in self.exited else "closed its pipe"
        self._stop(f"the supervisor (pid {self.supervisor}) {how}", abortable=False)
        while self.supervisor not in self.exited:  # it is on its way out: wait for its exit code
            self.read(0.05)
            self.reap()
        self._stop("", abortable=False)  # what it adopted in its last moments
        code = self.exited[self.supervisor]
        return SIGNALLED - code if code < 0 else code

    def _take(self, data: Optional[bytes]) -> None:
        if data is not None:
            self.watch.feed(data)

    def _supervisor_state(self) -> str:
        info = self.scan().get(self.supervisor)
        return "stopped" if info is not None and info.state in ("T", "t") else "not answering"

    def _stop(self, why: str, abortable: bool) -> None:
        said = [False]

        def find() -> dict[int, int]:
            if abortable:
                self._take(self.read(0))
                if self.watch.superseded(self.clock()):
                    return {}  # a new grant: the supervisor is back and holds the lease again
            alive = self.supervisor not in self.exited
            table = self.scan()
            if alive and self.supervisor in table and table[self.supervisor].gone:
                alive = False
            exclude = (self.me, self.supervisor) if alive else (self.me,)
            found = tree.members(table, self.token, (self.me,), exclude, marked=False, any_token=not self.token)
            if found and not said[0] and why:
                said[0] = True
                self.note(f"watcher: {why}: stopping {len(found)} process(es) of the tree before the "
                          f"cluster lease can pass (SIGTERM, SIGKILL after {grace:g} s)")
            return found

        grace = self.grace if self.watch.grace is None else min(self.grace, self.watch.grace)
        survivors = self.stopper.stop(find, grace)
        if survivors:
            self.note(f"watcher: pids {sorted(survivors)} survived SIGKILL (stuck in the kernel?)")


def log_note(path: str) -> Callable[[str], None]:
    """Lines of ours appended to the job's stderr log (the supervisor's own sink may be gone)."""
    return lambda text: files.append_note(path, text)


def main(argv: list[str]) -> int:
    """python -I -S -c BOOT PACKAGE_PARENT SUPERVISOR_PID BEAT_FD GRACE TOKEN LOG"""
    supervisor_text, fd_text, grace_text, token, log = argv
    supervisor, fd = int(supervisor_text), int(fd_text)

    def forward(signum: int, frame: object) -> None:
        try:
            os.kill(supervisor, signum)
        except OSError:
            pass

    for sig in (SIGTERM, SIGINT, SIGHUP):
        _signal.signal(sig, forward)
    return Watcher(supervisor, read_beats(fd), token, float(grace_text), log_note(log)).run()


def split_watcher(job: Job, grace: float, passthrough: bool, token: Optional[str] = None,
                  log: Optional[str] = None) -> int:
    """Fork. The parent becomes the watcher (an exec, never returns); the child returns the write
    end of the beat pipe, to hand to the supervisor it becomes. The caller is a child subreaper
    already (the setting survives exec); the child must become one again (fork does not keep it).
    The cluster house passes an empty `token` (everything below is the tree) and its own `log`."""
    beat_r, beat_w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid:
        os.close(beat_w)
        from ..proc.spawn import close_all_but

        close_all_but((beat_r,))  # the lock, the ready pipe, what cron left open: the supervisor's
        os.set_inheritable(beat_r, True)
        if log is None:
            log = "" if passthrough else job.stderr_log
        argv = [sys.executable, "-I", "-S", "-c", BOOT, paths.PACKAGE_PARENT,
                str(pid), str(beat_r), repr(grace), job.lock_path if token is None else token, log]
        env = procs.clean_environ(dict(os.environ))
        try:
            os.execve(sys.executable, argv, env)
        except OSError:  # no new interpreter (out of memory, a vanished venv): watch from this one
            os._exit(main(argv[6:]))
    os.close(beat_r)
    os.set_blocking(beat_w, False)  # a stopped watcher must never block a renew
    return beat_w
