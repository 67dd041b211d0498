"""What a tick needs to become a resident (its own job's, or the shared one): the hand-over,
written to a memfd that the exec'd interpreter inherits (the subreaper flag: proc/children.py);
and the start of a shared resident by its anchor (supervisor/anchor.py), which is the same."""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing stays out of the resident supervisor's memory; annotations are strings
    from typing import Optional

HOUSE_BOOT = ("import sys; sys.path.append(sys.argv[1]); from watchdog_singleton.supervisor.housemain import main; "
              "sys.exit(main(sys.argv[2:]))")


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


def exec_resident(package_parent: str, root: str, house: tuple[int, int, str], anchor_fd: int,
                  env: dict[str, str], nofile: Optional[int] = None) -> None:
    """In a child of the anchor: become a new resident with no first job, which adopts the jobs the
    anchor hands it over `anchor_fd` (supervisor/anchorlink.py). `nofile`: the soft open-file limit
    the anchor was started with (it raised its own, which we inherit), for the daemons."""
    from ..proc.children import become_subreaper
    from ..proc.spawn import close_all_but

    house_fd, house_dir_fd, house_dir = house
    job_fd = memfd_of({"job": None, "lock_fd": None, "dir_fd": None, "house_fd": house_fd,
                       "house_dir_fd": house_dir_fd, "house_dir": house_dir, "ready_fd": -1, "history": {},
                       "anchor_fd": anchor_fd, "from_anchor": True, "nofile": nofile})
    keep = (house_fd, house_dir_fd, anchor_fd, job_fd)
    for fd in keep:
        os.set_inheritable(fd, True)
    become_subreaper()
    close_all_but(keep)  # the other jobs' descriptors the anchor keeps are not the resident's
    os.execve(sys.executable, [sys.executable, "-I", "-S", "-c", HOUSE_BOOT, package_parent, "--state-dir",
                               root, str(job_fd)], env)
