"""A job's process tree: which processes belong to it, and stopping them until none is left.

This is the mechanism; which processes a caller stops, who goes first and with what grace is the
policy, `stop.stop_job()`, which every stop path goes through (the supervisor's leftovers and
shutdown, `stop`, `restart`, `uninstall`, the launcher's debris sweep, timeouts, the farm's slots
and its watcher; the cluster watcher drives the Stopper with a finder of its own). A process
belongs to job T when:
- its environment carries T's token (inherited through fork, setsid and exec alike, so a
  double-forked grandchild is found even after its supervisor died), or
- it descends from one of the job's roots (its supervisor, its daemon) through processes that
  carry no other job's token. A job started from inside another job's tree (a terminal opened
  by a daemon) carries its own token, and the other job's stops pass it by with all below it.

Stopping never takes one snapshot: it rescans until a scan finds nothing, so a child forked
during the grace wait is signalled too, and nothing of the tree survives.
"""

from __future__ import annotations

import os
import time

from . import procs

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing stays out of the resident supervisor's memory; annotations are strings
    from typing import Callable, Iterable, Optional

    from .procs import Proc

SIGTERM, SIGKILL, SIGCONT = 15, 9, 18  # numbers, not the signal module: it loads enum
KILL_WAIT = 5.0  # after SIGKILL: how long a process may take to vanish (D state) before we report it
# A scan of /proc is not atomic: a process that forks and exits between our listing and our read
# of it hands off to a child the listing did not have. So "nothing left" must hold for this many
# scans in a row, CONFIRM_PAUSE apart.
QUIET_SCANS = 3
CONFIRM_PAUSE = 0.005


def members(table: dict[int, Proc], token: str, roots: Iterable[int] = (),
            exclude: Iterable[int] = (), marked: bool = True, prefix: bool = False,
            any_token: bool = False) -> dict[int, int]:
    """pid -> start of every live process of the job with `token` (see the module docstring).
    Without `marked`, only what descends from `roots`: a supervisor that steps down as a
    duplicate stops its own descendants, not the other supervisor's, which carry the same token.
    With `prefix`, every process whose token starts with `token` (all of a farm's tasks). With
    `any_token`, everything that descends from `roots`, whatever it carries (a cluster house's
    watcher: every job below it)."""
    found: dict[int, int] = {}
    for info in table.values():
        if marked and info.token is not None and not info.gone and (
                info.token.startswith(token) if prefix else info.token == token):
            found[info.pid] = info.start
    children: dict[int, list[int]] = {}
    for info in table.values():
        children.setdefault(info.ppid, []).append(info.pid)
    stack = list(roots)
    seen = set(stack)
    while stack:
        for child in children.get(stack.pop(), ()):
            info = table[child]
            if child in seen or (not any_token and info.token is not None and info.token != token):
                continue  # another job's process: it and what hangs below it are not ours
            seen.add(child)
            stack.append(child)
            if not info.gone:
                found[child] = info.start
    for pid in exclude:
        found.pop(pid, None)
    return found


class Finder:
    """The job's tree as of now, on each call: the seam every stop path scans through."""

    def __init__(self, token: str, roots: Callable[[], Iterable[int]] = tuple,
                 scan: Callable[[], dict[int, Proc]] = procs.scan, exclude_self: bool = True,
                 marked: bool = True, prefix: bool = False) -> None:
        self.token = token
        self.roots = roots
        self.scan = scan
        self.exclude = (os.getpid(),) if exclude_self else ()
        self.marked = marked
        self.prefix = prefix  # every token that starts with `token`: the farm's finder

    def __call__(self) -> dict[int, int]:
        return self.members(self.scan())

    def members(self, table: dict[int, Proc]) -> dict[int, int]:
        return members(table, self.token, self.roots(), self.exclude, self.marked, self.prefix)


class Stopper:
    """SIGTERM to the tree, `grace` seconds, SIGKILL to what is left; rescans all along.

    Time, signals and reaping are seams, so tests drive them without processes or sleeps.
    """

    def __init__(self, send: Callable[[int, int], None] = os.kill, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep, reap: Optional[Callable[[], None]] = None) -> None:
        self.send = send
        self.clock = clock
        self.sleep = sleep
        self.reap = reap  # a parent must reap its own children to see them gone

    def signal_all(self, pids: Iterable[int], sig: int) -> None:
        for pid in pids:
            try:
                self.send(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass

    def stop(self, find: Callable[[], dict[int, int]], grace: float,
             on_first: Optional[Callable[[int], None]] = None) -> dict[int, int]:
        """Stop everything `find` returns, again and again, until a scan finds nothing.

        Every process gets SIGTERM (and SIGCONT, so a stopped one can act on it) as soon as a
        scan sees it; after `grace` seconds, whatever a scan still finds gets SIGKILL. Returns
        {} once nothing is left, or what survived KILL_WAIT seconds of SIGKILL (a process stuck
        in the kernel). `on_first(n)` is told how many processes the first scan found.
        """
        termed: set[tuple[int, int]] = set()
        deadline = self.clock() + grace
        kill_deadline: Optional[float] = None
        pause = 0.002
        first = True
        quiet = 0
        while True:
            if self.reap:
                self.reap()
            tree = find()
            if first:
                first = False
                if on_first:
                    on_first(len(tree))
            if not tree:
                quiet += 1
                if quiet >= QUIET_SCANS:
                    return {}
                self.sleep(CONFIRM_PAUSE)
                continue
            quiet = 0
            now = self.clock()
            if kill_deadline is None and now >= deadline:
                kill_deadline = now + KILL_WAIT
            if kill_deadline is not None:
                self.signal_all(tree, SIGKILL)
                if now >= kill_deadline:
                    return tree
            else:
                new = [pid for pid, start in tree.items() if (pid, start) not in termed]
                self.signal_all(new, SIGTERM)
                self.signal_all(new, SIGCONT)
                termed.update((pid, tree[pid]) for pid in new)
            self.sleep(pause)
            pause = min(pause * 2, 0.02)
