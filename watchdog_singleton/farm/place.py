"""Where the farm may read its tasks and write its state: only into folders and files that belong
to the user and that no one else can write.

A farm runs every `todo` row of its database as the user who started it, with the runners its
`runners.ini` names. So a work folder, database or runners file made by someone else (first, in
a shared place such as /tmp or a group project folder) would let them run commands as that user;
each of those paths is checked with lstat (a symlink is refused, never followed) before anything
is created or read, and the farm's own files are opened with O_NOFOLLOW and created 0600 (folders
0700) whatever the umask. A group-writable path is fine when the group is the user's private
group (same name as the user, no other member), as with a umask of 002 on Debian and Ubuntu.
"""

from __future__ import annotations

import errno
import grp
import os
import pwd
import stat
from typing import Optional

from ..errors import UserError

# O_NOFOLLOW: a symlink planted where our own file should be is refused, never followed.
OPEN_FLAGS = os.O_NOFOLLOW | os.O_CLOEXEC
FILE_MODE = 0o600
FOLDER_MODE = 0o700


def owner(uid: int) -> str:
    """`name (uid N)`, or `uid N` when the uid has no name here."""
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def _private_group(gid: int) -> bool:
    """Whether `gid` is the user's own group: named after the user, and no one else in it."""
    try:
        me = pwd.getpwuid(os.getuid()).pw_name
        group = grp.getgrgid(gid)
    except KeyError:
        return False
    return gid == os.getgid() and group.gr_name == me and set(group.gr_mem) <= {me}


def others_can_write(st: os.stat_result) -> bool:
    return bool(st.st_mode & stat.S_IWOTH) or bool(st.st_mode & stat.S_IWGRP and not _private_group(st.st_gid))


def problem(path: str, st: os.stat_result, what: str, folder: bool, owners: tuple[int, ...] = ()) -> Optional[str]:
    """Why the thing at `path` (lstat `st`) must not be used as the farm's `what`; None if it may.
    `owners`: who besides the user may own it (root, for a task list that only root can change)."""
    if stat.S_ISLNK(st.st_mode):
        return f"{what} {path} is a symlink: refusing to follow it"
    if folder and not stat.S_ISDIR(st.st_mode):
        return f"{what} {path} exists and is not a folder"
    if not folder and not stat.S_ISREG(st.st_mode):
        return f"{what} {path} is not a regular file: refusing to use it"
    if st.st_uid != os.getuid() and st.st_uid not in owners:
        return f"{what} {path} belongs to {owner(st.st_uid)}, not to you: refusing to use it"
    if others_can_write(st):
        return (f"{what} {path} can be written by other users (mode {stat.S_IMODE(st.st_mode):04o}): "
                f"refusing to use it; chmod go-w {path}")
    return None


def check(path: str, what: str, folder: bool = False, owners: tuple[int, ...] = ()) -> bool:
    """Refuse (UserError, exit 2) a `path` that is not ours alone; never creates anything.
    Returns whether it exists."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise UserError(f"cannot check {what} {path}: {exc.strerror}") from None
    why = problem(path, st, what, folder, owners)
    if why:
        raise UserError(why)
    return True


def _open(path: str, flags: int, what: str) -> int:
    try:
        return os.open(path, flags | OPEN_FLAGS, FILE_MODE)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # O_NOFOLLOW met a symlink
            raise UserError(f"{what} {path} is a symlink: refusing to follow it") from None
        raise


def private_folder(path: str, what: str) -> None:
    """Create `path` 0700 if missing; an existing one must be ours alone and is made 0700.
    OSError (EACCES, EROFS, ENOSPC...) is the caller's to report."""
    try:
        os.mkdir(path, FOLDER_MODE)
    except FileExistsError:
        check(path, what, folder=True)
    fd = _open(path, os.O_RDONLY | os.O_DIRECTORY, what)
    try:
        st = os.fstat(fd)
        why = problem(path, st, what, folder=True)
        if why:
            raise UserError(why)
        if stat.S_IMODE(st.st_mode) != FOLDER_MODE:
            os.fchmod(fd, FOLDER_MODE)  # mkdir's mode went through the umask
    finally:
        os.close(fd)


def open_private(path: str, flags: int, what: str = "file") -> int:
    """Open (creating it 0600) one of the farm's files; a symlink, another user's file or a file
    others can write raises UserError. OSError (ENOSPC, EROFS...) is the caller's to report."""
    fd = _open(path, flags, what)
    try:
        st = os.fstat(fd)
        why = problem(path, st, what, folder=False)
        if why:
            raise UserError(why)
        if stat.S_IMODE(st.st_mode) != FILE_MODE:
            os.fchmod(fd, FILE_MODE)  # created through a umask that took bits, or made by an older farm
    except BaseException:
        os.close(fd)
        raise
    return fd


def make_private(path: str, what: str) -> None:
    """An existing file of ours becomes 0600 (SQLite's -wal and -shm made by an older farm)."""
    try:
        fd = _open(path, os.O_RDONLY, what)
    except FileNotFoundError:
        return
    try:
        st = os.fstat(fd)
        why = problem(path, st, what, folder=False)
        if why:
            raise UserError(why)
        if stat.S_IMODE(st.st_mode) != FILE_MODE:
            os.fchmod(fd, FILE_MODE)
    finally:
        os.close(fd)
