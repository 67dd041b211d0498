"""What the test suite, the soak and the benchmark share: an unprivileged user to run
watchdog-singleton as (our users are never root, and root's crontab is never touched), and
small readers of /proc."""

from __future__ import annotations

import os
import pwd
import subprocess
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional


@dataclass
class UnprivilegedUser:
    name: str
    uid: int
    gid: int
    home: str

    def popen_kwargs(self) -> dict[str, Any]:
        """subprocess keyword arguments that run a command as this user."""
        if os.getuid() == self.uid:
            return {}
        return {"user": self.uid, "group": self.gid, "extra_groups": []}


def unprivileged_user(name: str) -> UnprivilegedUser:
    """As root: the unprivileged user NAME, created if missing. Otherwise: ourselves."""
    if os.getuid() != 0:
        me = pwd.getpwuid(os.getuid())
        return UnprivilegedUser(me.pw_name, me.pw_uid, me.pw_gid, me.pw_dir)
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--create-home", "--shell", "/bin/sh", name], check=True)
        entry = pwd.getpwnam(name)
    if entry.pw_uid == 0:
        raise RuntimeError(f"user {name} has uid 0: refusing to touch root's crontab")
    os.makedirs(entry.pw_dir, exist_ok=True)
    os.chown(entry.pw_dir, entry.pw_uid, entry.pw_gid)
    return UnprivilegedUser(entry.pw_name, entry.pw_uid, entry.pw_gid, entry.pw_dir)


def read_bytes(path: str) -> bytes:
    """The file's bytes, or b"" if it cannot be read (a process that just exited)."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return b""


def proc_uid(pid: int) -> Optional[int]:
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None


def user_pids(uid: int) -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit() and proc_uid(int(p)) == uid]


def locked_inodes() -> set[tuple[int, int, int]]:
    """(major, minor, inode) of every file with an active lock, from /proc/locks."""
    found = set()
    for line in read_bytes("/proc/locks").decode().splitlines():
        parts = line.split()
        if len(parts) >= 6 and parts[1] != "->":
            major, minor, ino = parts[5].split(":")
            found.add((int(major, 16), int(minor, 16), int(ino)))
    return found


def is_locked(path: str) -> bool:
    """Whether any process holds a lock on `path`, without touching the lock."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    return (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino) in locked_inodes()


def poll_until(condition: Callable[[], Any], timeout: float, interval: float) -> Any:
    """Poll `condition` until it returns something truthy (returned); None at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            return None
        time.sleep(interval)
