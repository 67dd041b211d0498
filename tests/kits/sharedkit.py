"""The shared resident from the outside, for end-to-end tests: which processes are a sandbox's
residents (plain or cluster house), and a kill -9 of the anchor above one."""

from __future__ import annotations

import os
import signal

from conftest import Sandbox, is_zombie, pids_with_arg, wait_for
from userkit import read_bytes


def residents(box: Sandbox) -> list[int]:
    """The shared residents (and cluster houses) of this sandbox's state folder."""
    found = []
    for pid in pids_with_arg("--state-dir", box.user.uid):
        cmdline = read_bytes(f"/proc/{pid}/cmdline")
        if b"housemain" in cmdline and box.dir.encode() in cmdline:
            found.append(pid)
    return found


def kill_anchor(house: int) -> None:
    """kill -9 of the anchor above the resident (supervisor/anchor.py): what follows is the case
    without one, as after a second kill -9 of a resident."""
    stat = read_bytes(f"/proc/{house}/stat")
    anchor = int(stat[stat.rindex(b")") + 2:].split()[1])
    assert b"supervisor.anchor" in read_bytes(f"/proc/{anchor}/cmdline")
    os.kill(anchor, signal.SIGKILL)
    wait_for(lambda: not os.path.exists(f"/proc/{anchor}") or is_zombie(anchor), 10, what="the anchor to die")
