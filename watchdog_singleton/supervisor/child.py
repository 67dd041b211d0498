"""The daemon's process tree as its supervisor sees it: start the command, reap what exits and say
what became of the daemon (`Exit`, or `Follow` when a forking command left its tree running),
list what is left of the tree, stop it. It writes no run state: the supervisor acts on what it
says. Every process goes through the supervisor's seams (spawn, scan, reap, signals, clock).

    child = Child(seams, reap=lifecycle.reap)  # the stopper reaps through the lifecycle while it waits
    child.spawn(job, daemon_env(job), fds, capture=True)
    for what in child.reaped(job, quiet=False, stopping=False):  # Exit | Follow, one at a time
        ...
    child.stop(job, grace, why, detailed=True, note=note)

It also holds what the daemon's start needs besides the spawn: its environment (`daemon_env`, the
launcher's lean mode and notify's hooks use it too) and the words for a start that failed.
"""

from __future__ import annotations

import os

from ..errors import CANNOT_EXECUTE
from ..proc import procs, tree
from ..proc.fdlimit import out_of
from ..proc.spawn import SpawnError
from ..proc.stop import stop_job

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing stays out of the resident supervisor's memory; annotations are strings
    from typing import Callable, Iterator, Optional, Union

    from ..job.model import Job
    from ..proc.spawn import Spawned
    from .seams import Seams


def exit_report(job: Job, code: int, lasted: float, message: str, log: str) -> str:
    """For whoever waits for the start: the daemon ended within its settle time."""
    detail = f" ({message})" if message else ""
    return f"{job.name} {procs.exit_text(code)} {lasted:.1f} s after it started{detail}" + (f"; see {log}" if log
                                                                                               else "")


def pipe_inode(fd: Optional[int]) -> Optional[int]:
    """The inode of the daemon's output pipe whose read end is `fd`: recorded, so that an adoption
    after a kill -9 of the shared resident reads that pipe again, and nothing else (adopt.py)."""
    if fd is None:
        return None
    try:
        return os.fstat(fd).st_ino
    except OSError:
        return None


def start_failure(job: Job, exc: Exception) -> tuple[int, str]:
    """The exit code and the message of a command that could not start (126: found, not run).
    EMFILE is the supervisor's, not the command's: named so (proc/fdlimit.py)."""
    if isinstance(exc, SpawnError):
        return exc.code, str(exc)
    if isinstance(exc, OSError):  # ours, before the fork: a pipe, /dev/null, the user database
        short = out_of(exc)
        why = f"the supervisor is {short}" if short else exc.strerror
        return CANNOT_EXECUTE, f"cannot start {job.command[0]}: {why}"
    return CANNOT_EXECUTE, str(exc)


class Exit:
    """The daemon is gone after `lasted` seconds (`followed`: it was the tree a forking command
    left; `pid` 0: that tree is gone with no exit of ours to reap); `left` is what remains of its
    tree, to stop ({} when nothing is, or when the supervisor stops the tree anyway)."""
    __slots__ = ("pid", "code", "lasted", "followed", "left")

    def __init__(self, pid: int, code: int, lasted: float, followed: bool, left: dict[int, int]) -> None:
        self.pid, self.code, self.lasted, self.followed, self.left = pid, code, lasted, followed, left

    def hint(self) -> str:
        """A command that exited 0 leaving processes has put itself in the background, unasked."""
        if self.code != 0 or not self.left:
            return ""
        processes = "process" if len(self.left) == 1 else "processes"
        return (f"exited 0 leaving {len(self.left)} {processes}: if it daemonizes itself, install it "
                "with --forking or run it in the foreground")


class Follow:
    """Forking: the oldest process the command left, `pid` (started at `start`), is the daemon now."""
    __slots__ = ("pid", "start", "count")

    def __init__(self, pid: int, start: int, count: int) -> None:
        self.pid, self.start, self.count = pid, start, count


class Child:
    def __init__(self, seams: Seams, reap: Callable[[], None]) -> None:
        self.seams = seams
        self.pid: Optional[int] = None  # the pid we wait for: the command, or what it left (forking)
        self.following = False  # forking: the command exited 0 and its tree is followed as the daemon
        # Adopted (adopt.py): the daemon is no child of ours, nor will its orphans be: always scan.
        self.adopted = False
        self.started = 0.0
        self.termed_at: Optional[float] = None  # the shared resident sent the tree SIGTERM already (all stop)
        # The shared resident's stop of our own (`term`): its grace runs beside the loop until then.
        self.aside_until: Optional[float] = None
        self._aside_find: Callable[[], dict[int, int]] = dict
        self._aside_termed: dict[int, int] = {}
        self._after_aside: Optional[Callable[[], None]] = None
        self.stopper = tree.Stopper(send=seams.send, clock=seams.clock, sleep=seams.sleep, reap=reap)

    def spawn(self, job: Job, env: dict[str, str], fds: tuple[int, ...], capture: bool) -> Spawned:
        if job.state_folder:
            self.seams.ensure_dir(job.state_folder)
        child = self.seams.spawn(job.command, job.workdir, env, fds, capture)
        self.pid, self.following, self.adopted, self.started = child.pid, False, False, self.seams.clock()
        return child

    def members(self, job: Job) -> dict[int, int]:
        """What is left of the tree once the daemon is reaped. The supervisor is a subreaper:
        whatever of the tree still lives is its child (double-forked, setsid'd, env-cleared or
        not), so with no child at all nothing is left and /proc is not scanned (a restart's cost
        stays flat however many processes the host runs). With any child (of the tree, or the
        supervisor's own, e.g. a notifier) the scan tells which is which, as before.

        The shared resident always has children (the other jobs' daemons): when its children are
        only those, nothing of this tree is left either, and /proc is not scanned."""
        if self.adopted:
            return self.finder(job)()
        if not self.seams.has_children():
            return {}
        if self.seams.house:
            return {} if self._only_known_children() else self.finder(job)()
        pid = self.seams.pid
        return tree.members(self.seams.scan(), job.lock_path, (pid,), (pid,))

    def _only_known_children(self) -> bool:
        """Whether every child of the shared resident is one it accounts for. A process left of a
        reaped daemon's tree is a child of ours (a subreaper), or descends from one that is: the
        daemon was our child, so the chain up from it reaches us through a child we have not
        reaped. None from the seam (the kernel does not list children): we cannot tell."""
        children = self.seams.children()
        return children is not None and set(children) <= self.seams.known()

    def finder(self, job: Job, marked: bool = True) -> Callable[[], dict[int, int]]:
        """The tree as of each call. A supervisor of its own: what descends from it, and what carries
        the token. In the shared resident, whose other children are other jobs' daemons: the daemon,
        what descends from it, what carries the token, and whatever an earlier call found that still
        lives (a child that cleared its environment keeps its place once its parent, the daemon, died)."""
        if not self.seams.house:
            return tree.Finder(job.lock_path, roots=lambda: (self.seams.pid,), scan=self.seams.scan, marked=marked)
        seen: dict[int, int] = {}

        def find() -> dict[int, int]:
            table = self.seams.scan()
            daemon = self.pid
            roots = (daemon,) if daemon is not None and daemon in table else ()
            found = tree.members(table, job.lock_path, roots, (self.seams.pid,), marked)
            if daemon is not None and daemon in roots and not table[daemon].gone:
                found[daemon] = table[daemon].start
            for pid, start in seen.items():
                info = table.get(pid)
                if info is not None and info.start == start and not info.gone:
                    found[pid] = start
            seen.update(found)
            return found

        return find

    def reaped(self, job: Job, quiet: bool, stopping: bool) -> Iterator[Union[Exit, Follow]]:
        """Reap every exited child, ours or adopted; say what became of the daemon, one at a time
        (the supervisor acts on each before the next). `quiet`: a duplicate stepping down, whose
        tree is another's; `stopping`: we stop the tree already, what it leaves is ours to end."""
        for pid, code in self.seams.reap():
            if pid != self.pid:
                continue
            self.pid = None
            lasted = self.seams.clock() - self.started
            if quiet or stopping:
                yield Exit(pid, code, lasted, self.following, {})
                continue
            left = self.members(job)
            if left and (self.following or (code == 0 and job.forking)):
                self.following = True
                yield self._follow(left)
                continue
            yield Exit(pid, code, lasted, self.following, left)
        if self.following and self.pid is None:
            left = self.members(job)
            yield self._follow(left) if left else Exit(0, 0, self.seams.clock() - self.started, True, {})

    def _follow(self, left: dict[int, int]) -> Follow:
        main = min(left, key=lambda pid: (left[pid], pid))
        self.pid = main
        return Follow(main, left[main], len(left))

    def stop(self, job: Job, grace: float, why: str, detailed: bool, note: Callable[[str], None]) -> None:
        """SIGTERM to the whole tree, SIGKILL after `grace`; `why` goes to the log once the first
        scan found something (`detailed`: with the numbers), and what survived SIGKILL. After
        `term`: what is left of the tree gets SIGKILL if its grace is over (`why` was told then)."""
        def say(count: int) -> None:
            if count and detailed:
                note(f"{why}; SIGTERM to {count} process(es), SIGKILL after {grace:g} s")
            elif count:
                note(why)

        told = self.aside_until is not None
        if self.aside_until is not None:
            grace = max(0.0, self.aside_until - self.seams.clock())
        elif self.termed_at is not None:  # its grace began then, beside the other jobs'
            grace = max(0.0, grace - (self.seams.clock() - self.termed_at))
        self.termed_at = self.aside_until = None
        self._aside_find, self._aside_termed = dict, {}
        survivors = stop_job(job.lock_path, grace, find=self.finder(job), stopper=self.stopper,
                             on_first=None if told else say).left
        if survivors:
            note(f"pids {sorted(survivors)} survived SIGKILL (stuck in the kernel?)")
        for pid, _code in self.seams.reap():
            if pid == self.pid:
                self.pid = None

    def term(self, job: Job, grace: float, why: str, detailed: bool, note: Callable[[str], None],
             then: Optional[Callable[[], None]]) -> None:
        """The shared resident's stop of our own (a timeout, a lifetime, leftovers): SIGTERM to the
        tree now, and its grace runs beside the loop, which calls `aside` until it is over and
        then `end_aside`: the other jobs' restarts never wait for it. `then` follows the stop."""
        self._aside_find, self._aside_termed, self._after_aside = self.finder(job), {}, then
        self.termed_at = self.seams.clock()
        self.aside_until = self.termed_at + grace
        count = len(self._term_new())
        if count:
            note(f"{why}; SIGTERM to {count} process(es), SIGKILL after {grace:g} s" if detailed else why)

    def aside(self) -> bool:
        """Whether the stop begun by `term` goes on: some of the tree is left, and its grace is not
        over. What joined the tree since the last look gets SIGTERM too."""
        return self.aside_until is not None and self.seams.clock() < self.aside_until and bool(self._term_new())

    def end_aside(self, job: Job, note: Callable[[str], None]) -> None:
        """The stop begun by `term` is over (the tree is gone, or its grace is): SIGKILL to what is
        left, then what follows the stop."""
        then, self._after_aside = self._after_aside, None
        self.stop(job, 0.0, "", False, note)
        if then is not None:
            then()

    def _term_new(self) -> dict[int, int]:
        tree = self._aside_find()
        new = [pid for pid, start in tree.items() if self._aside_termed.get(pid) != start]
        self.stopper.signal_all(new, 15)
        self.stopper.signal_all(new, 18)  # SIGCONT: a stopped process acts on its SIGTERM
        self._aside_termed.update(tree)
        return tree

    def step_down(self, job: Job) -> None:
        """A duplicate supervisor leaves: only its own descendants go (they carry no mark yet)."""
        stop_job(job.lock_path, job.grace, find=self.finder(job, marked=False), stopper=self.stopper)
