"""A task list: one command per line, `#` comments and blank lines skipped.

A task's id is its content's hash plus which copy of that content it is (the first
`make all` is ...-0, a second identical line ...-1): inserting or deleting other lines does
not renumber anything, so an edited list resumes without rerunning a finished task. The line
number is kept for ordering and display.

A line is a task once its newline has arrived: a line being appended (`echo a >> list` is one
write, an editor or a slow writer may make two) is left for the next look. One exception: when
the farm starts, the list is taken as complete, so a last line without its final newline (as
some editors save a file) is a task then; lines appended later need their newline.
"""

from __future__ import annotations

import os
import re
import shlex
from array import array
from typing import IO, Iterable, Iterator, NamedTuple

from ..errors import UserError
from . import place

try:  # the builtin SHA-1: hashlib would load OpenSSL, about 4 MiB of the farm's memory for one hash
    from _sha1 import sha1 as _sha1
except ImportError:  # a Python built without it
    from hashlib import sha1 as _sha1

# Shell syntax in a line means the user asked for a shell; otherwise the line is split and run directly.
_SHELL_SYNTAX = re.compile(r"[|&;<>()$`*?\[\]~{}\\!]|^\s*\w+=")
# A first word that only a shell understands (a builtin or keyword: there is no such program to
# run) means a shell too. Words that are also programs (echo, test, kill, pwd) run directly.
SHELL_WORDS = frozenset(
    ". : alias bg break case cd command continue do done elif else esac eval exec exit export fg fi "
    "for getopts hash if jobs read readonly return set shift then times trap type ulimit umask unalias "
    "unset until wait while".split())
# /bin/sh may be dash, which has none of these: a line that begins with one runs in bash.
BASH_WORDS = frozenset("source declare typeset local let shopt pushd popd dirs select function [[".split())
BASH = "/bin/bash"


class Task(NamedTuple):
    id: str
    line: int
    command: str


class Copies:
    """How many times each key (a hash: nonzero, its low bits random) came before: 8 to 32 bytes
    a key in an open-addressing table, where a dict of ints takes about 90. A list of 100k lines
    would otherwise cost the farm 9 MiB, half of GNU parallel's whole footprint."""

    def __init__(self) -> None:
        self.slots = array("Q", [0]) * 1024  # 0: empty
        self.used = 0
        self.more: dict[int, int] = {}  # the keys seen twice or more -> copies so far

    def take(self, key: int) -> int:
        """How many times `key` was taken before this time."""
        slots = self.slots
        mask = len(slots) - 1
        i = key & mask
        while True:
            here = slots[i]
            if here == 0:
                slots[i] = key
                self.used += 1
                if self.used * 2 > len(slots):
                    self._grow()
                return 0
            if here == key:
                copy = self.more.get(key, 1)
                self.more[key] = copy + 1
                return copy
            i = (i + 1) & mask

    def _grow(self) -> None:
        old, self.slots = self.slots, array("Q", [0]) * (2 * len(self.slots))
        mask = len(self.slots) - 1
        for key in old:
            if key:
                i = key & mask
                while self.slots[i]:
                    i = (i + 1) & mask
                self.slots[i] = key


def parse(lines: Iterable[str], last_unended: bool = True) -> Iterator[Task]:
    """The tasks of a list's lines, lazily: a long list is never held in memory whole.
    `last_unended=False`: a last line without its newline is still being written, and is skipped."""
    copies = Copies()  # 60 bits of each command's hash (+1, never 0) -> copies seen so far
    for number, raw in enumerate(lines, 1):
        if not last_unended and not raw.endswith("\n"):
            return  # only the last line can lack its newline
        command = raw.strip()
        if not command or command.startswith("#"):
            continue
        if "\0" in command:
            raise UserError(f"line {number} of the task list holds a NUL byte")
        full = sha1_hex(command.encode(errors="surrogateescape"))
        yield Task(f"{full[:12]}-{copies.take(int(full[:15], 16) + 1)}", number, command)


def sha1_hex(data: bytes) -> str:
    digest: str = _sha1(data).hexdigest()
    return digest


def read(path: str, at_start: bool = False) -> Iterator[Task]:
    """The tasks of the list at `path`, read line by line; a last line without its newline only
    `at_start` (see above). The list must be the user's (or root's) and no one else's to write:
    a line another user could add would run as this user."""
    try:
        f = _open_list(path)
    except FileNotFoundError:
        raise UserError(f"task list {path} does not exist") from None
    except IsADirectoryError:
        raise UserError(f"task list {path} is a folder, not a file") from None
    except OSError as exc:
        raise UserError(f"cannot read task list {path}: {exc.strerror}") from None
    with f:
        try:
            yield from parse(f, last_unended=at_start)
        except OSError as exc:
            raise UserError(f"cannot read task list {path}: {exc.strerror}") from None


def check_lines(path: str) -> None:
    """Refuse (exit 2) a list with a line the farm cannot run (a NUL byte in a task), before the
    farm creates or changes anything: a scan for the byte, and a parse only when it is there
    (in a comment it is harmless)."""
    try:
        with open(path, "rb") as f:
            clean = all(b"\0" not in chunk for chunk in iter(lambda: f.read(1 << 20), b""))
    except OSError as exc:
        raise UserError(f"cannot read task list {path}: {exc.strerror}") from None
    if not clean:
        for _task in read(path, at_start=True):
            pass


def check(path: str, st: os.stat_result) -> None:
    """Refuse (exit 2) a list someone else could write: another user's (root's is fine), or one
    others may write. A symlink to a list is fine: what counts is the file it names."""
    why = place.problem(path, st, "task list", folder=False, owners=(0,))
    if why:
        raise UserError(why.replace("refusing to use it", "refusing to run it (copy it to a file of yours)"))


def _open_list(path: str) -> IO[str]:
    # newline="\n": a lone \r is not a line's end here, so "\r" then "\n" in two writes cannot
    # make a half line look whole.
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        check(path, os.fstat(fd))
        return open(fd, encoding="utf-8", errors="surrogateescape", newline="\n")
    except BaseException:
        os.close(fd)
        raise


def argv(command: str) -> list[str]:
    """How a line runs: split into argv, or `/bin/sh -c LINE` when it uses shell syntax or begins
    with a shell builtin or keyword (`exit 3`, `cd dir`), `/bin/bash -c LINE` for bash's own
    (`source env.sh`)."""
    first = command.split(None, 1)[0] if command.strip() else ""
    if first in BASH_WORDS and os.path.exists(BASH):
        return [BASH, "-c", command]
    if first in SHELL_WORDS or _SHELL_SYNTAX.search(command):
        return ["/bin/sh", "-c", command]
    try:
        words = shlex.split(command)
    except ValueError:
        return ["/bin/sh", "-c", command]  # unbalanced quotes: let the shell say what is wrong
    return words or ["/bin/true"]


class Watch:
    """Whether a list file changed (its mtime and size) since it was last looked at: lines
    appended while the farm runs. `again()` after lines could not be taken: the next look sees
    the change once more."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.seen = self.last = (0, 0)

    def _stat(self) -> tuple[int, int]:
        try:
            st = os.stat(self.path)
        except OSError:
            return self.seen
        return (st.st_mtime_ns, st.st_size)

    def start(self) -> None:
        self.seen = self.last = self._stat()

    def changed(self) -> bool:
        current = self._stat()
        if current == self.seen:
            return False
        self.last, self.seen = self.seen, current
        return True

    def again(self) -> None:
        self.seen = self.last
