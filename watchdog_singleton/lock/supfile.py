"""A job's own supervisor's `PID START FD` file: `.sup.NAME.pid` beside NAME's lock.

    held = SupervisorFile(job.lock_dir, job.name)
    if held.try_acquire():      # flock(2), O_CLOEXEC: the daemon never inherits it
        held.stamp(pid, start)  # "PID START FD": us, field 22 of /proc/PID/stat, our fd on it

Whoever holds its flock is NAME's one supervisor: the launcher takes it before NAME's lock, and the
supervisor it becomes keeps it for its life; a launcher that adopts a daemon whose supervisor was
SIGKILLed (supervisor/adopt.py) takes it first, so two ticks never both adopt. The crontab line of
the job reads the file with shell builtins while the lock is held (cron/crontab.py): the tick runs
no Python while the process it names lives. No job name starts with '.', and the house's own files
start with `.house-`, so the name is never another job's lock nor the shared resident's.

The content is written in place under the flock, the new line over the old and then cut to its
length: a reader sees one whole line, or (only at the very first write) nothing, and then the
line runs the launcher, which finds the live supervisor and leaves.
"""

from __future__ import annotations

import os

from .flock import REPAIRED, FlockLock

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing stays out of the resident supervisor's memory; annotations are strings
    from typing import Optional

PREFIX = ".sup."
SUFFIX = ".pid"


def file_name(name: str) -> str:
    return f"{PREFIX}{name}{SUFFIX}"


class SupervisorFile:
    """The flock and the `PID START FD` line of NAME's one supervisor (see the module docstring)."""

    def __init__(self, lock_dir: str, name: str) -> None:
        self.lock = FlockLock(lock_dir, PREFIX + name, suffix=SUFFIX)
        self.path = self.lock.path
        self.stamped: tuple[int, int, bool] = (0, 0, False)  # stamped again when a deleted file is put back

    def try_acquire(self) -> bool:
        """True: ours now; False: another supervisor (or a launcher becoming one) holds it.
        UserError for a file we must not use (another user's, a symlink)."""
        return self.lock.try_acquire()

    def inheritable_fds(self) -> tuple[int, ...]:
        """Only across the launcher's exec into the supervisor; never the daemon's."""
        return self.lock.inheritable_fds()

    def stamp(self, pid: int, start: Optional[int], holds: bool = True) -> bool:
        """Write `PID START FD`: the process the crontab line checks (start: field 22 of its
        /proc/PID/stat; FD: its descriptor on this very file, which `holds` says it keeps: the
        line's cheap test). A supervisor of an older version stamped for it holds none: `PID
        START`. False if it could not be written (the line then runs the launcher, which looks at
        the run state)."""
        fd = self.lock.fd
        if fd is None or start is None:
            return False
        self.stamped = (pid, start, holds)
        return self._write(fd, self._line())

    def _line(self) -> bytes:
        pid, start, holds = self.stamped
        return f"{pid} {start} {self.lock.fd}\n".encode() if holds else f"{pid} {start}\n".encode()

    @staticmethod
    def _write(fd: int, line: bytes) -> bool:
        try:
            os.pwrite(fd, line, 0)
            os.ftruncate(fd, len(line))
        except OSError:
            return False
        return True

    def look(self) -> None:
        """With the supervisor's lock check: a file a /tmp cleaner deleted is put back (the flock we
        hold, at the path again) and stamped; old timestamps are refreshed."""
        if self.lock.fd is None:
            return
        if not self.lock.still_ours():
            if self.lock.repair() != REPAIRED or self.lock.fd is None:
                return  # held by another at the path, or not now: the next look tries again
            if self.stamped[0]:
                self._write(self.lock.fd, self._line())  # its descriptor may be another one now
        self.lock.refresh()

    def release(self) -> None:
        self.lock.release()
