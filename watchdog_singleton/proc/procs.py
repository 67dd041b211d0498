"""The process table, read from /proc: identities that survive PID reuse, and who owns a process.

A PID alone proves nothing (monit#151: a reused PID looks alive), so a process is named by
(pid, start time in clock ticks since boot) and the boot id. Every process of a job's tree
carries the job's token (its lock path) in its environment, read here as `Proc.token`.
Standard library only, and light: the resident supervisor imports this.
"""

from __future__ import annotations

import os
import stat

from ..envvars import JOB_ENV, NAME_ENV, TOKEN_ENV

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing stays out of the resident supervisor's memory; annotations are strings
    from typing import Iterable, Optional

OUR_ENV = (JOB_ENV, NAME_ENV, TOKEN_ENV)  # what no process of ours inherits from another job

_TOKEN_PREFIX = (TOKEN_ENV + "=").encode()


def boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


class Proc:
    """One process: its identity (pid, start), parent, state letter, owner and job token."""

    __slots__ = ("pid", "ppid", "start", "state", "uid", "token")

    def __init__(self, pid: int, ppid: int, start: int, state: str = "S", uid: int = 0,
                 token: Optional[str] = None) -> None:
        self.pid = pid
        self.ppid = ppid
        self.start = start
        self.state = state
        self.uid = uid
        self.token = token  # TOKEN_ENV from its environment; None if unset or unreadable

    @property
    def gone(self) -> bool:
        return self.state in ("Z", "X")

    def __repr__(self) -> str:
        return f"Proc({self.pid}, ppid={self.ppid}, start={self.start}, {self.state}, token={self.token!r})"


def read_proc(pid: int, with_token: bool = False) -> Optional[Proc]:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
        uid = os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None
    # comm may hold spaces and parentheses: the fields start after the last ')'.
    fields = raw[raw.rindex(b")") + 2:].split()
    proc = Proc(pid, int(fields[1]), int(fields[19]), fields[0].decode(), uid)
    if with_token:
        proc.token = read_token(pid)
    return proc


def read_token(pid: int) -> Optional[str]:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            env = f.read()
    except OSError:
        return None
    for item in env.split(b"\0"):
        if item.startswith(_TOKEN_PREFIX):
            return item[len(_TOKEN_PREFIX):].decode(errors="surrogateescape")
    return None


def start_time(pid: int) -> Optional[int]:
    info = read_proc(pid)
    return info.start if info else None


def start_wall(start: int) -> Optional[float]:
    """The Unix time a process of this boot started, from its start in clock ticks since boot."""
    try:
        with open("/proc/stat", "rb") as f:
            for line in f:
                if line.startswith(b"btime "):
                    return int(line.split()[1]) + start / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError):
        pass
    return None


def is_alive(pid: Optional[int], start: Optional[int], boot: Optional[str] = None) -> bool:
    """Whether the process (pid, start) of this boot still exists and is not a zombie."""
    if not pid or start is None or (boot and boot != boot_id()):
        return False
    info = read_proc(pid)
    return info is not None and info.start == start and not info.gone


def scan() -> dict[int, Proc]:
    """Every process; the job token is read for our own processes only (others' are not ours)."""
    uid = os.getuid()
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            info = read_proc(int(entry))
            if info is not None:
                if info.uid == uid and not info.gone:
                    info.token = read_token(info.pid)
                table[info.pid] = info
    return table


def reap_exited() -> list[tuple[int, int]]:
    """(pid, exit code) of every child that has exited, ours or adopted (a subreaper's), without
    waiting for the others."""
    exited: list[tuple[int, int]] = []
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return exited
        if pid == 0:
            return exited
        exited.append((pid, os.waitstatus_to_exitcode(status)))


def holding_file(table: dict[int, Proc], path: str) -> set[int]:
    """Our processes with an open descriptor on `path`'s inode (holders of an inherited lock).

    Only a regular file of ours at `path` is looked up: a symlink another user planted in a lock
    folder others may write would otherwise name whatever file of ours it points to, and every
    stop signals these holders."""
    uid = os.getuid()
    try:
        target = os.stat(path, follow_symlinks=False)
    except OSError:
        return set()
    if target.st_uid != uid or not stat.S_ISREG(target.st_mode):
        return set()
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


def arguments(pid: int) -> Optional[list[bytes]]:
    """`pid`'s command line, argument by argument; None if it cannot be read (gone, not ours)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().rstrip(b"\0").split(b"\0")
    except OSError:
        return None


def command_line(pid: int) -> str:
    args = arguments(pid)
    return "?" if args is None else " ".join(a.decode(errors="replace") for a in args)


# The programs (`python -c PROGRAM`) of our own processes above the jobs: the shared resident
# (tick/becoming.py HOUSE_BOOT), its anchor (supervisor/anchor.py BOOT) and a cluster watcher
# (cluster/watcher.py BOOT, above a cluster job's own supervisor or above the cluster house).
INFRASTRUCTURE = tuple(b"from watchdog_singleton.%s import main" % module for module in (
    b"supervisor.housemain", b"supervisor.anchor", b"cluster.watcher"))


def is_infrastructure(pid: int) -> bool:
    """Whether `pid` is one of ours above the jobs (INFRASTRUCTURE). Never a stop's to signal: the
    resident and its anchor hold every shared job's lock, the anchor passes SIGTERM on to the
    resident, and either way every job of theirs would stop, not the one asked for."""
    args = arguments(pid) or []
    program = args[args.index(b"-c") + 1] if b"-c" in args[:-1] else b""
    return any(marker in program for marker in INFRASTRUCTURE)


def identities(table: dict[int, Proc], pids: Iterable[int]) -> dict[int, int]:
    return {pid: table[pid].start for pid in pids if pid in table}


def clean_environ(environ: dict[str, str]) -> dict[str, str]:
    """`environ` without another job's markers: a process of ours never carries them (a job
    installed from inside another job's tree must not be taken for part of that tree)."""
    return {k: v for k, v in environ.items() if k not in OUR_ENV}


# Linux's numbers; the signal module would load enum into the resident supervisor.
SIGNAL_NAMES = {1: "SIGHUP", 2: "SIGINT", 3: "SIGQUIT", 4: "SIGILL", 5: "SIGTRAP", 6: "SIGABRT", 7: "SIGBUS",
                8: "SIGFPE", 9: "SIGKILL", 10: "SIGUSR1", 11: "SIGSEGV", 12: "SIGUSR2", 13: "SIGPIPE",
                14: "SIGALRM", 15: "SIGTERM", 24: "SIGXCPU", 25: "SIGXFSZ", 31: "SIGSYS"}


# The end of a process that is not our child (a daemon the shared resident adopted from one that
# died): waitpid is its parent's, so how it ended is unknown. Below any signal's -N.
UNKNOWN_EXIT = -1000


def exit_text(code: int) -> str:
    """'exited with code 1' or 'was killed by SIGKILL' (code -9, as waitstatus_to_exitcode gives)."""
    if code == UNKNOWN_EXIT:
        return "ended (how is unknown: it was adopted, not our child)"
    if code < 0:
        return f"was killed by {SIGNAL_NAMES.get(-code, f'signal {-code}')}"
    return f"exited with code {code}"
