"""How one task is started: the default runs its command; a named runner wraps it.

Runners live in an INI file, `runners.ini` in the work folder or
`$XDG_CONFIG_HOME/watchdog-singleton/runners.ini` (the first that defines the name wins):

    [cvmfs]
    setup = /opt/setup.sh            ; sourced by bash before the task
    prefix = apptainer exec /img.sif ; put in front of the whole command (a container)
    tmpdir = yes                     ; run in a fresh folder, removed after the task

A runners file says what runs as the user, so it is read only when it is the user's alone
(farm/place.py): another user's, a symlink or one others may write is refused (exit 2).
"""

from __future__ import annotations

import configparser
import os
import shlex
from typing import NamedTuple, Optional

from ..errors import UserError
from . import place
from .tasklist import argv as task_argv

FILE_NAME = "runners.ini"
KEYS = {"setup", "prefix", "tmpdir"}


class Runner(NamedTuple):
    name: str = "default"
    setup: Optional[str] = None
    prefix: tuple[str, ...] = ()
    tmpdir: bool = False

    def argv(self, command: str) -> list[str]:
        args = task_argv(command)
        if self.setup:
            # "$0" is the setup script, the task follows as "$@": no quoting of the task needed.
            args = ["/bin/bash", "-c", '. "$0" && exec "$@"', self.setup, *args]
        return [*self.prefix, *args]


def config_files(workdir: str) -> list[str]:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return [os.path.join(workdir, FILE_NAME), os.path.join(base, "watchdog-singleton", FILE_NAME)]


def load(name: Optional[str], workdir: str) -> Runner:
    if not name or name == "default":
        return Runner()
    for path in config_files(workdir):
        parser = configparser.ConfigParser(inline_comment_prefixes=(";", "#"))
        if not place.check(path, "runners file"):
            continue
        try:
            fd = os.open(path, os.O_RDONLY | place.OPEN_FLAGS)
            with open(fd, encoding="utf-8") as f:
                parser.read_file(f, path)
        except OSError as exc:
            raise UserError(f"cannot read runners file {path}: {exc.strerror}") from None
        except (configparser.Error, UnicodeDecodeError) as exc:
            raise UserError(f"cannot read runners file {path}: {str(exc).splitlines()[0]}") from None
        if not parser.has_section(name):
            continue
        section = parser[name]
        unknown = set(section) - KEYS
        if unknown:
            raise UserError(f"runner {name} in {path}: unknown key {sorted(unknown)[0]} "
                            f"(known: {', '.join(sorted(KEYS))})")
        setup = section.get("setup") or None
        if setup and not os.path.isfile(setup):
            raise UserError(f"runner {name} in {path}: setup script {setup} does not exist")
        try:
            prefix = tuple(shlex.split(section.get("prefix", "")))
            tmpdir = section.getboolean("tmpdir", False)
        except ValueError as exc:
            raise UserError(f"runner {name} in {path}: {exc}") from None
        return Runner(name, os.path.abspath(setup) if setup else None, prefix, tmpdir)
    raise UserError(f"no runner named {name} in {' or '.join(config_files(workdir))}")
