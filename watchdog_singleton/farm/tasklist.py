"""A task list: one command per line, `#` comments and blank lines skipped.

A task's id is its content's hash plus which copy of that content it is (the first
`make all` is ...-0, a second identical line ...-1): inserting or deleting other lines does
not renumber anything, so an edited list resumes without rerunning a finished task. The line
number is kept for ordering and display.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
from typing import Iterable, Iterator, NamedTuple

from ..errors import UserError

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


def parse(lines: Iterable[str]) -> Iterator[Task]:
    """The tasks of a list's lines, lazily: a long list is never held in memory whole."""
    copies: dict[int, int] = {}  # 8 bytes of each command's hash -> copies seen so far
    for number, raw in enumerate(lines, 1):
        command = raw.strip()
        if not command or command.startswith("#"):
            continue
        if "\0" in command:
            raise UserError(f"line {number} of the task list holds a NUL byte")
        full = hashlib.sha1(command.encode(errors="surrogateescape")).hexdigest()
        key = int(full[:16], 16)
        copy = copies.get(key, 0)
        copies[key] = copy + 1
        yield Task(f"{full[:12]}-{copy}", number, command)


def read(path: str) -> Iterator[Task]:
    """The tasks of the list at `path`, read line by line."""
    try:
        f = open(path, encoding="utf-8", errors="surrogateescape")
    except FileNotFoundError:
        raise UserError(f"task list {path} does not exist") from None
    except IsADirectoryError:
        raise UserError(f"task list {path} is a folder, not a file") from None
    except OSError as exc:
        raise UserError(f"cannot read task list {path}: {exc.strerror}") from None
    with f:
        try:
            yield from parse(f)
        except OSError as exc:
            raise UserError(f"cannot read task list {path}: {exc.strerror}") from None


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
