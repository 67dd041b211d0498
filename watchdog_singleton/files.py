"""Small file helpers: private folders, atomic writes, reads that never follow a symlink."""

from __future__ import annotations

import errno
import os

from . import lightjson
from .errors import UserError

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing stays out of the resident supervisor's memory; annotations are strings
    from typing import Any, Callable, Optional

# O_NOFOLLOW: a symlink planted where we expect our own file is refused, never followed.
READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC


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
            raise UserError(f"cannot create folder {folder}: {exc.strerror}") from None


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


def write_atomic(path: str, data: bytes) -> None:
    """Replace `path` with `data` so that readers see the old or the new file, never half of one."""
    folder = os.path.dirname(path)
    ensure_dir(folder)
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, CREATE_FLAGS | os.O_EXCL | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def read_bytes(path: str) -> Optional[bytes]:
    try:
        fd = os.open(path, READ_FLAGS)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UserError(f"{path} is a symlink: refusing to follow it") from None
        raise UserError(f"cannot read {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        return f.read()


def read_json(path: str) -> Optional[dict[str, Any]]:
    data = read_bytes(path)
    if data is None:
        return None
    try:
        value = lightjson.loads(data.decode(errors="surrogateescape"))
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def write_json(path: str, value: dict[str, Any]) -> None:
    write_atomic(path, (lightjson.dumps(value) + "\n").encode())


def remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


class JsonFolder:
    """One JSON file per name in a folder; every name is checked, so no path leaves the folder."""

    def __init__(self, folder: str, check_name: Callable[[str], str]) -> None:
        self.folder = folder
        self.check_name = check_name

    def path(self, name: str) -> str:
        return os.path.join(self.folder, f"{self.check_name(name)}.json")

    def read(self, name: str) -> Optional[dict[str, Any]]:
        return read_json(self.path(name))

    def write(self, name: str, value: dict[str, Any]) -> None:
        write_json(self.path(name), value)

    def delete(self, name: str) -> None:
        remove(self.path(name))

    def names(self) -> list[str]:
        try:
            entries = os.listdir(self.folder)
        except FileNotFoundError:
            return []
        found = []
        for entry in entries:
            if entry.endswith(".json"):
                try:
                    found.append(self.check_name(entry[:-5]))
                except UserError:
                    continue  # not one of ours (a temp file, a stray)
        return sorted(found)
