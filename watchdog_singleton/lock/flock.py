"""The singleton lock: flock(2) on NAME.lock in a private per-user folder under /tmp.

flock(2), not lockf: it interoperates with `flock -n` on the same file, and it belongs to the
open file description, so a daemon that inherits the descriptor keeps the lock held even if the
supervisor that took it is SIGKILLed. The folder is checked before anything inside it is opened:
another user may have planted it, or a symlink, in the world-writable /tmp.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import time

from ..envvars import LOCK_DIR_ENV
from ..errors import FAILED, UserError

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing stays out of the resident supervisor's memory; annotations are strings
    import ctypes
    from typing import Optional, Protocol

    class SingletonLock(Protocol):
        """What the launcher and supervisor need of a lock; a cross-host lock will be a second kind."""

        path: str

        def try_acquire(self) -> bool: ...
        def inheritable_fds(self) -> tuple[int, ...]: ...
        def still_ours(self) -> bool: ...
        def repair(self) -> str: ...
        def refresh(self, older_than: float = ...) -> None: ...
        def release(self) -> None: ...


STALE_SECONDS = 3600.0

# systemd-tmpfiles holds LOCK_EX on each folder it scans, briefly: wait this long for it.
FOLDER_LOCK_WAIT = 2.0
# repair() runs in the supervisor's loop: a shorter wait, and it is retried at the next check.
REPAIR_FOLDER_WAIT = 0.5
# flock(2) errors of a filesystem that does not do it (NFS mounted nolock, some FUSE).
NO_FLOCK = (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP)

# What repair() found.
REPAIRED = "repaired"  # the path names a file we hold again
TAKEN = "taken"  # another process holds the file at the path now
NOT_NOW = "not now"  # it could not be done this time; try again later

# Filesystems where flock(2) is emulated or node-local: not a lock one can trust per host.
NETWORK_FS_MAGIC = {
    0x6969: "NFS",
    0x0BD00BD0: "Lustre",
    0x47504653: "GPFS",
    0xFF534D42: "CIFS",
    0xFE534D42: "SMB2",
    0x517B: "SMB",
    0x65735546: "FUSE",
    0x00C36400: "CephFS",
    0x564C: "NCP",
    0x6B414653: "AFS",
    0x5346414F: "OpenAFS",
    0x19830326: "BeeGFS",
}


_LIBC: list["ctypes.CDLL"] = []


def filesystem_type(path: str) -> Optional[str]:
    """The name of the network filesystem `path` (or its nearest existing parent) is on, else None."""
    import ctypes

    current = os.path.abspath(path)
    while not os.path.exists(current):
        current = os.path.dirname(current)

    class Statfs(ctypes.Structure):
        _fields_ = [("f_type", ctypes.c_long), ("rest", ctypes.c_byte * 256)]

    if not _LIBC:  # the interpreter's own symbols, libc's among them: find_library would run ldconfig
        _LIBC.append(ctypes.CDLL(None, use_errno=True))
    libc = _LIBC[0]
    buf = Statfs()
    if libc.statfs(os.fsencode(current), ctypes.byref(buf)) != 0:
        return None
    return NETWORK_FS_MAGIC.get(buf.f_type & 0xFFFFFFFF)


# -- the per-user default lock folder ---------------------------------------------------------
# /tmp/watchdog-singleton-UID was a name any local user could create first (and so keep every
# job of UID from starting). The default is now /tmp/watchdog-singleton-UID-<16 random hex>,
# recorded in the per-host state folder (0700, so nobody else can read the name there), made by
# mkdir 0700 and used only while it is a folder of ours. A name someone took (after a reboot,
# having seen it in /tmp) is replaced by a fresh one. Definitions store the folder's path;
# one that names a default of ours that is gone or taken follows the recorded one instead.
DEFAULT_PREFIX = "/tmp/watchdog-singleton-"
SUFFIX_HEX = 16


def default_owner(path: str) -> Optional[int]:
    """The uid whose default lock folder `path` is by its name (/tmp/watchdog-singleton-UID or
    /tmp/watchdog-singleton-UID-...), else None."""
    path = os.path.normpath(path)
    if not path.startswith(DEFAULT_PREFIX):
        return None
    uid_text, _, _ = path[len(DEFAULT_PREFIX):].partition("-")
    return int(uid_text) if uid_text.isdigit() else None


def is_own_default(path: str) -> bool:
    """Whether `path` is one of our default lock folders: the old fixed name or a recorded one."""
    path = os.path.normpath(path)
    legacy = f"{DEFAULT_PREFIX}{os.getuid()}"
    if path == legacy:
        return True
    suffix = path[len(legacy) + 1:] if path.startswith(legacy + "-") else ""
    return len(suffix) == SUFFIX_HEX and all(c in "0123456789abcdef" for c in suffix)


def folder_problem(path: str) -> Optional[str]:
    """Why the existing `path` cannot be our lock folder (not a folder, a symlink, not ours);
    None if it is a folder of ours or is missing."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"cannot check lock folder {path}: {exc.strerror}"
    try:
        _check_dir_stat(path, st)
    except UserError as exc:
        return str(exc)
    return None


def _read_record(record: str) -> Optional[str]:
    try:
        fd = os.open(record, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        text = os.read(fd, 4096).decode(errors="replace").strip()
    except OSError:
        return None
    finally:
        os.close(fd)
    return text if text != f"{DEFAULT_PREFIX}{os.getuid()}" and is_own_default(text) else None


_PROPOSED: list[str] = []  # one proposal per process: every job of one apply gets the same


def _new_name() -> str:
    return f"{DEFAULT_PREFIX}{os.getuid()}-{os.urandom(SUFFIX_HEX // 2).hex()}"


def private_lock_dir(root: str, create: bool = True) -> str:
    """The user's default lock folder on this host (see DEFAULT_PREFIX), chosen and made on
    first use, and chosen anew when another user holds the recorded name. Without `create`
    nothing is written: the name that commit_lock_dir would make is returned (checks and dry
    runs change nothing)."""
    from .. import paths

    record = paths.lock_dir_record(root)
    current = _read_record(record)
    if current is not None and folder_problem(current) is None:
        return current
    if not create:
        if not _PROPOSED:
            _PROPOSED.append(_new_name())
        return _PROPOSED[0]
    return commit_lock_dir(root, _PROPOSED[0] if _PROPOSED else _new_name())


def default_lock_dir(root: "str | None" = None, create: bool = True) -> str:
    """WATCHDOG_SINGLETON_LOCK_DIR, else the user's private folder under /tmp recorded in the
    per-host folder `root` (private_lock_dir: made on first use, a name nobody else can take;
    without `create`, the name it would make). Literal /tmp, not $TMPDIR: HPC sites often point
    TMPDIR at shared scratch."""
    explicit = os.environ.get(LOCK_DIR_ENV)
    if explicit:
        return os.path.abspath(explicit)
    from .. import paths

    return private_lock_dir(root or paths.state_dir(), create)


def commit_lock_dir(root: str, wanted: str) -> str:
    """Make `wanted` (a name private_lock_dir proposed) the recorded default and create it, 0700;
    the folder to use: `wanted`, or the one recorded meanwhile, or a fresh name if someone took
    it. Any other folder is returned as it is."""
    if not is_own_default(wanted) or wanted == f"{DEFAULT_PREFIX}{os.getuid()}":
        return wanted
    from .. import paths
    from ..files import ensure_dir

    record = paths.lock_dir_record(root)
    ensure_dir(root)
    try:
        fd = os.open(record, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise UserError(f"cannot record the lock folder in {record}: {exc.strerror}", FAILED) from None
    try:
        try:  # two launchers choosing at once must agree on one name
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as exc:
            if exc.errno not in NO_FLOCK:
                raise
        current = _read_record(record)
        if current is not None and folder_problem(current) is None:
            if current == wanted:
                try:
                    os.mkdir(current, 0o700)
                except FileExistsError:
                    pass
                if folder_problem(current) is None:
                    return current
            else:
                return current
        chosen = wanted
        while True:
            try:
                os.mkdir(chosen, 0o700)
                if folder_problem(chosen) is None:
                    break
            except FileExistsError:
                pass
            chosen = _new_name()  # taken by someone who saw or guessed it: another name
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{chosen}\n".encode(), 0)
        os.fsync(fd)
        return chosen
    except OSError as exc:
        raise UserError(f"cannot make a lock folder under /tmp: {exc.strerror}", FAILED) from None
    finally:
        os.close(fd)


def resolve_lock_dir(stored: str, root: str) -> str:
    """The folder a stored definition's lock lives in: `stored`, unless it names a default of
    ours that is gone or taken by another user; then the recorded default, which is ours.

    A copy running under the old fixed name keeps it (the folder is ours), so stops and ticks
    still find it; after a reboot, or once someone else has made that name, the private one is
    used. Never raises: with the state folder unwritable, `stored` is kept (status says why).
    """
    if not is_own_default(stored):
        return stored
    if folder_problem(stored) is None and os.path.isdir(stored):
        return stored
    from .. import paths

    recorded = _read_record(paths.lock_dir_record(root))
    if stored == recorded and folder_problem(stored) is None:
        return stored  # ours but not made yet (after a reboot): the lock makes it
    try:
        return private_lock_dir(root)
    except (OSError, UserError):
        return stored


def check_lock_dir(path: str, allow_network_fs: bool = False) -> None:
    """Refuse a lock folder we must not use; never creates anything. Missing is fine."""
    owner = default_owner(path)
    if owner is not None and owner != os.getuid():
        raise UserError(f"lock folder {path} is named as the default lock folder of uid {owner}: "
                        "refusing to take another user's name (choose a folder of your own)")
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        parent_fs = filesystem_type(path)
        if parent_fs and not allow_network_fs:
            raise UserError(_network_fs_message(path, parent_fs)) from None
        return
    _check_dir_stat(path, st)
    fs = filesystem_type(path)
    if fs and not allow_network_fs:
        raise UserError(_network_fs_message(path, fs))


def check_lock_file(lock_dir: str, name: str) -> None:
    """Refuse a NAME.lock that is no regular file of ours (another user made it first in a folder
    others may write): the launcher would refuse it at every tick. Missing is fine."""
    path = os.path.join(lock_dir, f"{name}.lock")
    try:
        st = os.lstat(path)
    except OSError:
        return  # missing, or the folder is not ours to look in: check_lock_dir says so
    if st.st_uid != os.getuid():
        raise UserError(not_ours(path, lock_dir, st.st_uid))
    if not stat.S_ISREG(st.st_mode):
        raise UserError(f"lock file {path} is not a regular file: refusing to use it")


def not_ours(path: str, lock_dir: str, owner: int) -> str:
    return (f"lock file {path} belongs to uid {owner}, not to you: refusing to use it "
            f"(whoever may write {lock_dir} can block the job so: use a lock folder only you can write)")


def _network_fs_message(path: str, fs: str) -> str:
    return (f"lock folder {path} is on {fs}: flock there is not a per-host lock you can trust; "
            "use local /tmp or pass --allow-network-fs")


def _check_dir_stat(path: str, st: os.stat_result) -> None:
    if stat.S_ISLNK(st.st_mode):
        raise UserError(f"lock folder {path} is a symlink: refusing to use it (someone may be hijacking it)")
    if not stat.S_ISDIR(st.st_mode):
        raise UserError(f"lock folder {path} exists and is not a folder")
    if st.st_uid != os.getuid():
        raise UserError(f"lock folder {path} belongs to uid {st.st_uid}, not to you: refusing to use it")


def open_private_dir(path: str) -> int:
    """Open (creating it 0700 if missing) our lock folder and return an fd on it.

    A folder that exists already keeps its mode: it may be a home or a group-shared folder,
    and the lock file inside is 0600 anyway.
    """
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise UserError(f"cannot create lock folder {path}: {exc.strerror}") from None
    try:
        # O_NOFOLLOW|O_DIRECTORY: a symlink or a file planted in /tmp is refused, not followed.
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            _check_dir_stat(path, os.lstat(path))
        raise UserError(f"cannot open lock folder {path}: {exc.strerror}") from None
    try:
        _check_dir_stat(path, os.fstat(fd))
    except BaseException:
        os.close(fd)
        raise
    return fd


def share_folder(fd: int, path: str, wait: float = FOLDER_LOCK_WAIT) -> None:
    """Take a shared flock on the lock folder (systemd-tmpfiles skips folders that hold one),
    waiting up to `wait` seconds while a cleaner holds it exclusively. UserError if it cannot."""
    deadline = time.monotonic() + wait
    pause = 0.01
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            left = deadline - time.monotonic()
            if left <= 0:
                raise UserError(f"lock folder {path} is busy (a /tmp cleaner scanning it?); "
                                "the next tick retries", FAILED) from None
            time.sleep(min(pause, left))
            pause = min(pause * 2, 0.1)
        except OSError as exc:
            raise UserError(_flock_problem(path, exc), FAILED) from None


def _flock_problem(path: str, exc: OSError) -> str:
    if exc.errno in NO_FLOCK:
        return (f"flock(2) does not work in {path} ({exc.strerror}): "
                "use a lock folder on a local filesystem, such as /tmp")
    return f"cannot lock {path}: {exc.strerror}"


class FlockLock:
    """flock(2) on `<dir>/<name>.lock` (or another `suffix`), with the checks that keep it a singleton."""

    def __init__(self, lock_dir: str, name: str, suffix: str = ".lock") -> None:
        self.lock_dir = lock_dir
        self.name = f"{name}{suffix}"
        self.path = os.path.join(lock_dir, self.name)
        self.dir_fd: Optional[int] = None
        self.fd: Optional[int] = None

    def try_acquire(self) -> bool:
        self.dir_fd = open_private_dir(self.lock_dir)
        try:
            share_folder(self.dir_fd, self.lock_dir)
        except BaseException:
            self.release()
            raise
        while True:
            fd = self._open_lock_file(self.name, os.O_CREAT)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                self.release()
                return False
            except OSError as exc:
                os.close(fd)
                self.release()
                raise UserError(_flock_problem(self.path, exc), FAILED) from None
            # The file, or its folder, may have been removed or replaced between open() and flock().
            if self._is_at_path(fd) and self._dir_is_current():
                self.fd = fd
                self._protect(fd)
                return True
            os.close(fd)

    def _open_lock_file(self, name: str, extra: int) -> int:
        assert self.dir_fd is not None
        flags = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | extra
        try:
            fd = os.open(name, flags, 0o600, dir_fd=self.dir_fd)
        except OSError as exc:
            owner = None
            try:
                owner = os.stat(name, dir_fd=self.dir_fd, follow_symlinks=False).st_uid
            except OSError:
                pass
            if owner is not None and owner != os.getuid():  # made first by someone who may write the folder
                raise UserError(self._not_ours(owner)) from None
            raise UserError(f"cannot open lock file {self.path}: {exc.strerror}") from None
        owner = os.fstat(fd).st_uid
        if owner != os.getuid():
            os.close(fd)
            raise UserError(self._not_ours(owner))
        return fd

    def _not_ours(self, owner: int) -> str:
        return not_ours(self.path, self.lock_dir, owner)

    def _is_at_path(self, fd: int) -> bool:
        try:
            here = os.stat(self.name, dir_fd=self.dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        mine = os.fstat(fd)
        return (here.st_dev, here.st_ino) == (mine.st_dev, mine.st_ino)

    @staticmethod
    def _protect(fd: int) -> None:
        # The sticky bit on a regular file makes systemd-tmpfiles never age it out.
        try:
            os.fchmod(fd, 0o1600)
        except OSError:
            pass

    def inheritable_fds(self) -> tuple[int, ...]:
        """Descriptors the daemon inherits so the lock outlives a SIGKILLed supervisor."""
        return tuple(fd for fd in (self.fd, self.dir_fd) if fd is not None)

    def still_ours(self) -> bool:
        """True while the path still names the inode we hold (a /tmp cleaner may have removed it)."""
        if self.fd is None:
            return False
        try:
            folder = os.stat(self.lock_dir, follow_symlinks=False)
        except FileNotFoundError:
            return False
        assert self.dir_fd is not None
        held = os.fstat(self.dir_fd)
        if (folder.st_dev, folder.st_ino) != (held.st_dev, held.st_ino):
            return False
        return self._is_at_path(self.fd)

    def repair(self) -> str:
        """Put a file we hold locked back at the path, never taking the lock from anyone else.

        An unlocked file at the path is adopted; a missing one is linked into place (link(2),
        unlike rename(2), fails rather than replace what a racing launcher created).
        """
        try:
            if self.dir_fd is None or not self._dir_is_current():
                folder = open_private_dir(self.lock_dir)
                try:
                    share_folder(folder, self.lock_dir, REPAIR_FOLDER_WAIT)
                except UserError:
                    os.close(folder)
                    raise
                if self.dir_fd is not None:
                    os.close(self.dir_fd)
                self.dir_fd = folder
            for _ in range(5):
                try:
                    fd = self._open_lock_file(self.name, 0)
                except UserError:
                    fd = None  # missing (or not ours): make a new one
                if fd is None:
                    fd = self._link_new_file()
                    if fd is None:
                        continue  # someone created one meanwhile: adopt theirs or lose to it
                else:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        os.close(fd)
                        return TAKEN
                    if not self._is_at_path(fd):
                        os.close(fd)
                        continue
                    self._protect(fd)
                if self.fd is not None:
                    os.close(self.fd)
                self.fd = fd
                return REPAIRED
        except (OSError, UserError):
            pass
        return NOT_NOW

    def _link_new_file(self) -> Optional[int]:
        """A new locked file linked in at the path; None if a file appeared there first."""
        assert self.dir_fd is not None
        tmp = f"{self.name}.{os.getpid()}.new"
        try:
            os.unlink(tmp, dir_fd=self.dir_fd)  # left by a crashed supervisor with our pid
        except FileNotFoundError:
            pass
        fd = self._open_lock_file(tmp, os.O_CREAT | os.O_EXCL)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self._protect(fd)
            os.link(tmp, self.name, src_dir_fd=self.dir_fd, dst_dir_fd=self.dir_fd)
        except FileExistsError:
            os.close(fd)
            return None
        finally:
            os.unlink(tmp, dir_fd=self.dir_fd)
        return fd

    def _dir_is_current(self) -> bool:
        assert self.dir_fd is not None
        try:
            folder = os.stat(self.lock_dir, follow_symlinks=False)
        except FileNotFoundError:
            return False
        held = os.fstat(self.dir_fd)
        return (folder.st_dev, folder.st_ino) == (held.st_dev, held.st_ino)

    def refresh(self, older_than: float = STALE_SECONDS) -> None:
        """Touch the file and folder once they look old, so age-based cleaners (tmpwatch,
        tmpreaper, tmpfiles' age rule) always see them as new."""
        now = time.time()
        for target in (self.fd, self.dir_fd):
            if target is None:
                continue
            try:
                st = os.fstat(target)
                if now - min(st.st_atime, st.st_mtime) > older_than:
                    os.utime(target)
            except OSError:
                pass

    def release(self) -> None:
        for fd in (self.fd, self.dir_fd):
            if fd is not None:
                os.close(fd)
        self.fd = self.dir_fd = None


def locked_files() -> set[tuple[int, int, int]]:
    """(major, minor, inode) of every file that holds an active lock, from /proc/locks."""
    ids = set()
    try:
        with open("/proc/locks") as f:
            for line in f:
                parts = line.split()
                if len(parts) < 6 or parts[1] == "->":
                    continue
                try:
                    major, minor, ino = parts[5].split(":")
                    ids.add((int(major, 16), int(minor, 16), int(ino)))
                except ValueError:
                    continue
    except OSError:
        pass
    return ids


def is_held(path: str, locked: Optional[set[tuple[int, int, int]]] = None) -> bool:
    """Whether some process holds a lock on `path`, read from /proc/locks without touching the
    lock; pass `locked_files()` when asking about many paths, to read /proc/locks once."""
    try:
        st = os.stat(path, follow_symlinks=False)
    except OSError:
        return False
    return (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino) in (locked if locked is not None else locked_files())
