"""Small file helpers: private folders, atomic writes, reads that never follow a symlink."""

from __future__ import annotations

import errno
import fcntl
import os
import stat

from . import lightjson
from .errors import FAILED, UserError

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing stays out of the resident supervisor's memory; annotations are strings
    from typing import Any, BinaryIO, Callable, Optional

# O_NOFOLLOW: a symlink planted where we expect our own file is refused, never followed.
READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC


class Unreadable(UserError):
    """A file or folder of ours could not be read for an environmental reason (EIO, ESTALE, EACCES)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, FAILED)


class RefusedFile(OSError):
    """A path of ours holds something we must not write into: a FIFO, a symlink, another user's file.

    An OSError, so that a writer that retries on OSError (the log sink's thread) retries on it too.
    """


def _file_problem(path: str, st: os.stat_result, what: str) -> Optional[str]:
    if stat.S_ISLNK(st.st_mode):
        return f"{what} {path} is a symlink: refusing to follow it"
    if not stat.S_ISREG(st.st_mode):
        kind = ("a FIFO" if stat.S_ISFIFO(st.st_mode) else "a socket" if stat.S_ISSOCK(st.st_mode)
                else "a folder" if stat.S_ISDIR(st.st_mode) else "a device" if stat.S_ISCHR(st.st_mode)
                or stat.S_ISBLK(st.st_mode) else "not a file")
        return f"{what} {path} is {kind}, not a regular file: refusing to use it"
    if st.st_uid != os.getuid():
        return f"{what} {path} belongs to uid {st.st_uid}, not to you: refusing to write into it"
    return None


def check_log_file(path: str) -> Optional[str]:
    """Why `path` cannot be our log file (a FIFO, a symlink, another user's file), without
    creating or opening anything; None if it is fine or missing."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"cannot check log file {path}: {exc.strerror}"
    return _file_problem(path, st, "log file")


def open_log_file(path: str) -> int:
    """Open (creating 0600) `path` for appending, only if it is a regular file of ours.

    Raises RefusedFile for a FIFO, socket, device, symlink or another user's file, and OSError
    for the rest (EACCES, ENOSPC...).
    """
    try:
        # O_NONBLOCK: a FIFO with no reader fails at once (ENXIO) instead of blocking the
        # supervisor, lock held, until someone opens its other end.
        fd = os.open(path, CREATE_FLAGS | os.O_APPEND | os.O_NONBLOCK, 0o600)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENXIO, errno.EISDIR):
            try:
                problem = _file_problem(path, os.lstat(path), "log file")
            except OSError:
                problem = None
            raise RefusedFile(problem or f"cannot open log file {path}: {exc.strerror}") from None
        raise
    try:
        problem = _file_problem(path, os.fstat(fd), "log file")
        if problem:
            raise RefusedFile(problem)
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
    except BaseException:
        os.close(fd)
        raise
    return fd


def ensure_dir(path: str) -> None:
    """mkdir -p, creating each missing folder 0700."""
    missing = []
    current = os.path.abspath(path)
    while not os.path.isdir(current):
        missing.append(current)
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    for folder in reversed(missing):
        try:
            os.mkdir(folder, 0o700)
        except FileExistsError:
            if not os.path.isdir(folder):
                raise UserError(f"{folder} exists and is not a folder") from None
        except OSError as exc:
            raise UserError(f"cannot create folder {folder}: {exc.strerror}", FAILED) from None


def creatable_dir_problem(path: str) -> Optional[str]:
    """Why `path` could not be created or written as a folder, without creating anything; None if it can."""
    current = os.path.abspath(path)
    while not os.path.exists(current):
        parent = os.path.dirname(current)
        if parent == current:
            return f"no existing parent for {path}"
        current = parent
    if not os.path.isdir(current):
        return f"{current} is not a folder"
    if not os.access(current, os.W_OK | os.X_OK):
        return f"{current} is not writable"
    return None


def write_atomic(path: str, data: bytes, durable: bool = True, mode: int = 0o600) -> None:
    """Replace `path` with `data` so that readers see the old or the new file, never half of one.

    Raises OSError (ENOSPC, EROFS, EIO...) with nothing left behind: a failed write removes its
    temp file, so the next try starts clean. `durable=False` skips the fsyncs, for files that are
    worthless after a crash of the machine anyway. `mode` is the new file's, set before it has
    the name.
    """
    folder = os.path.dirname(path)
    ensure_dir(folder)
    for _ in range(10):
        # A random name, not the pid: a temp file left by a killed writer (or a recycled pid)
        # must never block the next write; O_EXCL then only guards against a rare collision.
        tmp = f"{path}.{os.urandom(6).hex()}.tmp"
        try:
            fd = os.open(tmp, CREATE_FLAGS | os.O_EXCL, 0o600)
        except FileExistsError:
            continue
        break
    else:
        raise FileExistsError(errno.EEXIST, "no free temp file name", path)
    try:
        try:
            if mode != 0o600:
                os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]  # a short write (a full disk on the way) goes on
            if durable:
                os.fsync(fd)  # the data is on disk before the name points at it
        finally:
            os.close(fd)  # on NFS, a write error may only show here
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    if durable:
        _fsync_dir(folder or ".")


def _fsync_dir(folder: str) -> None:
    """Make a rename in `folder` durable; best effort, the file itself is already safe."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def read_bytes(path: str) -> Optional[bytes]:
    """The file's bytes, or None if it is missing. A symlink is refused (UserError); a file that
    cannot be read (EIO, ESTALE, EACCES) raises Unreadable."""
    try:
        fd = os.open(path, READ_FLAGS | os.O_NONBLOCK)  # O_NONBLOCK: a FIFO planted here must not hang us
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UserError(f"{path} is a symlink: refusing to follow it") from None
        raise Unreadable(f"cannot read {path}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise Unreadable(f"cannot read {path}: not a regular file")
            return f.read()
    except OSError as exc:
        raise Unreadable(f"cannot read {path}: {exc.strerror}") from None


def read_json(path: str) -> Optional[dict[str, Any]]:
    data = read_bytes(path)
    if data is None:
        return None
    try:
        value = lightjson.loads(data.decode(errors="surrogateescape"))
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def write_json(path: str, value: dict[str, Any], durable: bool = True) -> None:
    write_atomic(path, (lightjson.dumps(value) + "\n").encode(), durable)


def remove(path: str) -> None:
    """Remove `path` if it is there; a folder we cannot write (read-only, EACCES) is a UserError."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise UserError(f"cannot remove {path}: {exc.strerror}", FAILED) from None


class JsonFolder:
    """One JSON file per name in a folder; every name is checked, so no path leaves the folder."""

    def __init__(self, folder: str, check_name: Callable[[str], str]) -> None:
        self.folder = folder
        self.check_name = check_name

    def path(self, name: str) -> str:
        return os.path.join(self.folder, f"{self.check_name(name)}.json")

    def read(self, name: str) -> Optional[dict[str, Any]]:
        return read_json(self.path(name))

    def write(self, name: str, value: dict[str, Any], durable: bool = True) -> None:
        write_json(self.path(name), value, durable)

    def delete(self, name: str) -> None:
        remove(self.path(name))

    def names(self) -> list[str]:
        try:
            entries = os.listdir(self.folder)
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise Unreadable(f"cannot list {self.folder}: {exc.strerror}") from None
        found = []
        for entry in entries:
            if entry.endswith(".json"):
                try:
                    found.append(self.check_name(entry[:-5]))
                except UserError:
                    continue  # not one of ours (a temp file, a stray)
        return sorted(found)


def append_note(path: str, text: str) -> None:
    """One line of ours, `[watchdog-singleton TIME] text`, appended to a job's log by a process
    that has no log sink of its own (the watcher, the notifier). Never follows a symlink;
    failing to write is not worth failing for."""
    if not path:
        return
    from .timefmt import now_iso

    try:
        fd = open_log_file(path)  # a FIFO planted there must not hang us, nor another's file get our line
    except OSError:
        return
    try:
        os.write(fd, f"[watchdog-singleton {now_iso()}] {text}\n".encode(errors="replace"))
    except OSError:
        pass
    finally:
        os.close(fd)


def read_own_file(path: str, limit: int) -> Optional[bytes]:
    """The last `limit` bytes of `path` if it is a regular file of ours; None for anything else
    (missing, a symlink, a FIFO, another user's file), which is never followed nor waited on."""
    try:
        fd = os.open(path, READ_FLAGS | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if _file_problem(path, st, "file"):
            return None
        os.lseek(fd, max(0, st.st_size - limit), os.SEEK_SET)
        chunks: list[bytes] = []
        left = limit
        while left > 0:
            chunk = os.read(fd, left)
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    except OSError:
        return None
    finally:
        os.close(fd)


def open_own_file(path: str) -> BinaryIO:
    """`path` opened for reading if it is a regular file of ours. A symlink, a FIFO or another
    user's file (planted in a folder others can write) is refused with one line, never followed
    nor waited on. FileNotFoundError goes to the caller."""
    try:
        fd = os.open(path, READ_FLAGS | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UserError(f"{path} is a symlink: refusing to follow it") from None
        raise
    st = os.fstat(fd)
    problem = _file_problem(path, st, "file")
    if problem:
        os.close(fd)
        raise UserError(problem.replace("refusing to write into it", "refusing to read it"))
    return os.fdopen(fd, "rb")


def read_to_end(fd: int) -> bytes:
    """Everything until EOF on `fd` (a pipe, a memfd), which is then closed."""
    chunks: list[bytes] = []
    try:
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
    finally:
        os.close(fd)
