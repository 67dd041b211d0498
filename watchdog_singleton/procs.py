"""The process table, read from /proc: identities that survive PID reuse, trees, and killing them.

A PID alone proves nothing (monit#151: a reused PID looks alive), so a process is named by
(pid, start time in clock ticks since boot) and the boot id.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing stays out of the resident supervisor's memory; annotations are strings
    from typing import Callable, Iterable, Optional

JOB_ENV = "WATCHDOG_SINGLETON_JOB"  # the job's name, for the daemon's own use
TOKEN_ENV = "WATCHDOG_SINGLETON_LOCK"  # the lock path: marks every process of the job's tree


def boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


@dataclass(frozen=True)
class ProcInfo:
    pid: int
    ppid: int
    start: int  # clock ticks since boot
    state: str
    uid: int


def read_proc(pid: int) -> Optional[ProcInfo]:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
        uid = os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None
    # comm may hold spaces and parentheses: the fields start after the last ')'.
    fields = raw[raw.rindex(b")") + 2:].split()
    return ProcInfo(pid=pid, ppid=int(fields[1]), start=int(fields[19]), state=fields[0].decode(), uid=uid)


def start_time(pid: int) -> Optional[int]:
    info = read_proc(pid)
    return info.start if info else None


def is_alive(pid: Optional[int], start: Optional[int], boot: Optional[str] = None) -> bool:
    """Whether the process (pid, start) of this boot still exists and is not a zombie."""
    if not pid or start is None or (boot and boot != boot_id()):
        return False
    info = read_proc(pid)
    return info is not None and info.start == start and info.state not in ("Z", "X")


def all_procs() -> dict[int, ProcInfo]:
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            info = read_proc(int(entry))
            if info is not None:
                table[info.pid] = info
    return table


def descendants(table: dict[int, ProcInfo], roots: Iterable[int]) -> set[int]:
    children: dict[int, list[int]] = {}
    for info in table.values():
        children.setdefault(info.ppid, []).append(info.pid)
    found: set[int] = set()
    stack = list(roots)
    while stack:
        for child in children.get(stack.pop(), ()):
            if child not in found:
                found.add(child)
                stack.append(child)
    return found


def marked_with(table: dict[int, ProcInfo], token: str) -> set[int]:
    """Our processes whose environment carries TOKEN_ENV=token: the job's tree, even double-forked.

    The environment is inherited through fork, setsid and exec alike, so a grandchild that was
    reparented to init is still found here after its supervisor died.
    """
    needle = f"{TOKEN_ENV}={token}".encode()
    uid = os.getuid()
    me = os.getpid()
    found = set()
    for info in table.values():
        if info.uid != uid or info.pid == me or info.state in ("Z", "X"):
            continue
        try:
            with open(f"/proc/{info.pid}/environ", "rb") as f:
                env = f.read()
        except OSError:
            continue
        if needle in env.split(b"\0"):
            found.add(info.pid)
    return found


def holding_file(table: dict[int, ProcInfo], path: str) -> set[int]:
    """Our processes with an open descriptor on `path`'s inode (holders of an inherited lock)."""
    try:
        target = os.stat(path)
    except OSError:
        return set()
    uid = os.getuid()
    found = set()
    for info in table.values():
        if info.uid != uid or info.pid == os.getpid():
            continue
        fd_dir = f"/proc/{info.pid}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for fd in fds:
            try:
                st = os.stat(f"{fd_dir}/{fd}")
            except OSError:
                continue
            if (st.st_dev, st.st_ino) == (target.st_dev, target.st_ino):
                found.add(info.pid)
                break
    return found


@dataclass
class Killer:
    """Sends signals and waits, through seams a test can drive."""

    send: Callable[[int, int], None] = os.kill
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    reap: Optional[Callable[[], None]] = None  # a parent must reap its own children to see them gone

    def signal_all(self, pids: Iterable[int], sig: int) -> None:
        for pid in pids:
            try:
                self.send(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass

    def wait_gone(self, procs: dict[int, int], deadline: float) -> dict[int, int]:
        """Wait until every (pid -> start) is gone or the deadline passes; return the survivors."""
        pause = 0.005
        while True:
            if self.reap:
                self.reap()
            alive = {pid: st for pid, st in procs.items() if is_alive(pid, st)}
            if not alive or self.clock() >= deadline:
                return alive
            self.sleep(pause)
            pause = min(pause * 2, 0.05)

    def terminate(self, procs: dict[int, int], grace: float) -> dict[int, int]:
        """SIGTERM to all at once, `grace` seconds, SIGKILL to what is left; returns what survived."""
        if not procs:
            return {}
        self.signal_all(procs, signal.SIGTERM)
        self.signal_all(procs, signal.SIGCONT)  # a stopped process acts on SIGTERM only once continued
        left = self.wait_gone(procs, self.clock() + grace)
        if left:
            self.signal_all(left, signal.SIGKILL)
            left = self.wait_gone(left, self.clock() + 5.0)
        return left


def identities(table: dict[int, ProcInfo], pids: Iterable[int]) -> dict[int, int]:
    return {pid: table[pid].start for pid in pids if pid in table}
