"""Stopping a job: one policy over the tree mechanism (tree.py), for every caller.

    stop_job(job.lock_path, job.grace)                       # the tick's debris sweep: all it finds
    stop_job(lock_path, grace, supervisor=(pid, start), roots=alive_roots,
             holders=lock_path)                              # `stop`: its supervisor first, then the rest
    stop_job(lock_path, grace, roots=lambda: (me,), scan=seams.scan, stopper=seams_stopper,
             on_first=say)                                   # the supervisor: its own tree
    stop_job(slot.token, grace, roots=lambda: (task,))       # the farm: one slot's task
    stop_job(marker, grace, prefix=True)                     # the farm and its watcher: every task

In order: a live supervisor named by `supervisor` gets SIGTERM first and is waited for (it stops
its own tree gracefully, up to `grace` plus the time SIGKILL may take); then every process the
finder sees (the token's, what descends from `roots`, and with `holders` whoever holds that
file open, an inherited lock) gets SIGTERM, and SIGKILL after `grace`, rescanning until a scan
finds nothing. Returns how many processes were found and what survived SIGKILL (stuck in the
kernel). Standard library only, and light: the resident supervisor and the tick import this.
"""

from __future__ import annotations

import os

from . import procs
from .tree import KILL_WAIT, SIGTERM, Finder, Stopper

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing stays out of the resident supervisor's memory; annotations are strings
    from typing import Callable, Iterable, Optional

    from .procs import Proc


class Stopped:
    """How many processes a stop found (the supervisor counted as one), and what survived it."""
    __slots__ = ("found", "left")

    def __init__(self, found: int, left: dict[int, int]) -> None:
        self.found, self.left = found, left


def stop_job(token: str, grace: float, *, roots: Callable[[], Iterable[int]] = tuple,
             supervisor: Optional[tuple[int, int]] = None, holders: Optional[str] = None,
             marked: bool = True, prefix: bool = False, scan: Callable[[], dict[int, Proc]] = procs.scan,
             stopper: Optional[Stopper] = None, on_first: Optional[Callable[[int], None]] = None,
             alive: Callable[[int, int], bool] = procs.is_alive, exclude_self: bool = True,
             find: Optional[Callable[[], dict[int, int]]] = None,
             spare: Callable[[int], bool] = procs.is_infrastructure) -> Stopped:
    """Stop the job whose processes carry `token` (see the module docstring); `roots` is asked
    once, after the supervisor is gone. Without `exclude_self`, a caller inside the tree (a
    command the daemon ran) is part of what it stops. `find`, when given, is the tree instead
    (the shared resident's, rooted at one job's daemon among the others'). A holder of `holders`
    that `spare` names is left alone: by default our own processes above the jobs (the shared
    resident and its anchor hold every shared job's lock; procs.is_infrastructure)."""
    stopper = stopper or Stopper()
    found = 0
    if supervisor is not None and alive(*supervisor):
        found += 1
        stopper.signal_all((supervisor[0],), SIGTERM)
        deadline = stopper.clock() + grace + KILL_WAIT
        while alive(*supervisor) and stopper.clock() < deadline:
            stopper.sleep(0.01)
    if find is None:
        fixed = tuple(roots())
        finder = Finder(token, roots=lambda: fixed, scan=scan, exclude_self=exclude_self, marked=marked,
                        prefix=prefix)
        find = finder if holders is None else _with_holders(finder, holders, spare)
    counted: list[int] = []

    def first(count: int) -> None:
        counted.append(count)
        if on_first is not None:
            on_first(count)
    left = stopper.stop(find, grace, on_first=first)
    return Stopped(found + (counted[0] if counted else 0), left)


def _with_holders(finder: Finder, path: str, spare: Callable[[int], bool]) -> Callable[[], dict[int, int]]:
    """The tree plus our processes holding `path` open (a lock inherited by a process that cleared
    its environment and left the tree)."""
    def find() -> dict[int, int]:
        table = finder.scan()
        tree = finder.members(table)
        tree.update(procs.identities(table, procs.holding_file(table, path) - {os.getpid()}))
        return {pid: start for pid, start in tree.items() if not spare(pid)}
    return find
