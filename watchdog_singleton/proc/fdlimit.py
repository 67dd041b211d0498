"""Open-file limits of the shared resident and its anchor (install --shared).

    started_with = raise_soft()     # at start: our soft RLIMIT_NOFILE up to the hard one
    spawn(..., nofile=started_with) # each daemon gets back the soft limit we were started with
    room(in_use(), soft_limit())    # None: one more job fits; else why not

One resident holds a few descriptors for each of its jobs, so it raises its own soft limit to the
hard one, as systemd does for itself; a daemon gets the soft limit the resident was started with,
never more: a daemon that uses select() must not get a limit above 1024 it did not ask for.
`resource` (a 19 KiB C module) is loaded only by the processes that call these: the shared
resident and its anchor, never a tick nor a resident of its own job.
"""

from __future__ import annotations

import errno
import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing stays out of the resident supervisor's memory; annotations are strings
    from typing import Optional

# A job's share while it runs: its lock and its folder, its daemon's two pipes, its two log files,
# measured: 6 (81 descriptors with 12 jobs, 39 with 5; 9 for the resident itself).
PER_JOB = 6
# What must stay free once a job is taken: a restart's pipes (output pair, exec report, /dev/null:
# 7 at its peak), a notifier's 3, a tick's connection with the 2 lock descriptors it hands over,
# and the listing of /proc/self/fd.
MARGIN = 16
OUT_OF = (errno.EMFILE, errno.ENFILE)


def raise_soft() -> Optional[int]:
    """Our soft RLIMIT_NOFILE up to the hard limit; the soft limit we were started with (None if
    it could not be read: then nothing changed)."""
    import resource

    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < hard or hard == resource.RLIM_INFINITY:
            raised = soft if hard == resource.RLIM_INFINITY else hard  # Linux never has it infinite
            resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
    except (OSError, ValueError):
        return None
    return int(soft)


def set_soft(soft: int) -> None:
    """In a forked child before exec: the soft limit back to `soft` (the hard one stays)."""
    import resource

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft if hard == resource.RLIM_INFINITY else min(soft, hard), hard))


def soft_limit() -> Optional[int]:
    """Our soft limit; None if `resource` cannot be had now (not loaded, and no descriptor left to load it)."""
    try:
        import resource
    except ImportError:
        return None
    return int(resource.getrlimit(resource.RLIMIT_NOFILE)[0])


def in_use() -> int:
    """How many descriptors we hold (a listing of /proc/self/fd, less the listing's own); a large
    number when none is left to list them with."""
    try:
        return len(os.listdir("/proc/self/fd")) - 1
    except OSError as exc:
        if exc.errno in OUT_OF:
            return sys.maxsize
        raise


def room(used: int, limit: Optional[int]) -> Optional[str]:
    """None if one more job fits beside `used` descriptors under `limit`; else why not."""
    if limit is None or used + PER_JOB + MARGIN <= limit:
        return None
    return f"the shared supervisor pid {os.getpid()} has no descriptors left (limit {limit})"


def out_of(exc: BaseException) -> Optional[str]:
    """"out of file descriptors (limit N)" for EMFILE and ENFILE; None for anything else."""
    number = exc.errno if isinstance(exc, OSError) else None
    return said(number) if number in OUT_OF else None


def said(number: int) -> str:
    if number == errno.ENFILE:
        return "out of file descriptors (the system's limit, ENFILE)"
    limit = soft_limit() if "resource" in sys.modules else None  # loading it needs a descriptor
    return f"out of file descriptors (limit {limit})" if limit is not None else "out of file descriptors"
