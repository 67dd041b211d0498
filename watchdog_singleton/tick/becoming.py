"""What a tick needs to become a resident (its own job's, or the shared one): the hand-over,
written to a memfd that the exec'd interpreter inherits (the subreaper flag: proc/children.py)."""

from __future__ import annotations

import os


def memfd_of(hand_over: dict[str, object]) -> int:
    """`hand_over`, marshalled into a memfd read from its start by the exec'd resident (marshal is
    built in: reading it loads nothing); the descriptor is inheritable."""
    import marshal

    payload = marshal.dumps(hand_over)
    job_fd = os.memfd_create("watchdog-singleton-job", 0)  # inherited by the exec'd supervisor
    view = memoryview(payload)
    while view:
        view = view[os.write(job_fd, view):]
    os.lseek(job_fd, 0, os.SEEK_SET)
    return job_fd
