"""The lock watch: the supervisor's periodic look at its lock file.

A /tmp cleaner may delete the lock file or its folder. The launcher never starts a second copy
because of that (it checks the recorded supervisor after its flock), so this watch can be slow:
every CHECK_SECONDS it puts a held lock back at the path, refreshes timestamps that age-based
cleaners read, and notices when another supervisor holds the path for good (then this one is
the duplicate and steps down). It is the only timer of an idle supervisor, so its period is
the idle job's wake-up rate.

Why a minute is enough: the tick that first finds the lock file gone (it takes a fresh one and
then sees this supervisor alive) sends SIGHUP, which makes the watch look at once (`soon`), so
the lock is back within a tick of the deletion, as before; age-based cleaners age files by hours
or days (`refresh` touches only files older than an hour); and a duplicate needs a lost state
file besides a deleted lock, and is found within CHECK_SECONDS + 2 * TAKEN_RECHECK.
"""

from __future__ import annotations

from ..lock.flock import REPAIRED, TAKEN

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing stays out of the resident supervisor's memory; annotations are strings
    from typing import Callable

    from ..lock.flock import SingletonLock

CHECK_SECONDS = 60.0
TAKEN_CHECKS = 3  # another process held our path this many checks in a row: we are a duplicate
TAKEN_RECHECK = 1.0  # once the path is taken, look again sooner

OK = "ok"
DUPLICATE = "duplicate"


class LockWatch:
    def __init__(self, lock: SingletonLock, note: Callable[[str], None], start: float,
                 interval: float = CHECK_SECONDS) -> None:
        self.lock = lock
        self.note = note
        self.interval = interval
        self.next_check = start + interval
        self.taken_checks = 0

    def due(self, now: float) -> bool:
        return now >= self.next_check

    def soon(self) -> None:
        """Look at the next wake (SIGHUP: a tick found the lock file replaced, or logs rotated)."""
        self.next_check = float("-inf")

    def check(self, now: float) -> str:
        """Look at the lock once; DUPLICATE when this supervisor must step down."""
        outcome = OK
        if self.lock.still_ours():
            self.taken_checks = 0
        else:
            repaired = self.lock.repair()
            if repaired == REPAIRED:
                self.taken_checks = 0
                self.note(f"lock file {self.lock.path} was removed; put it back")
            elif repaired == TAKEN:
                # A launcher checking for a live copy holds it for a moment; a second supervisor
                # (started in a race with a /tmp cleaner) holds it for good, and then it is the one.
                self.taken_checks += 1
                if self.taken_checks >= TAKEN_CHECKS:
                    self.note(f"another process holds {self.lock.path}: this supervisor is a duplicate; "
                              "stopping its own tree")
                    outcome = DUPLICATE
        self.lock.refresh()
        self.next_check = now + (TAKEN_RECHECK if self.taken_checks else self.interval)
        return outcome
