"""What the shell completes: job names, farm work folders and task lists, scheduler names, and
run's options. Called at every TAB, so each reads a folder listing or two and nothing more; a
missing or unreadable state folder completes nothing, and no error ever reaches the shell.
"""

from __future__ import annotations

import functools
import os
import re
from typing import Any, Callable, List

Items = List[Any]  # str, or (value, help) pairs: typer turns both into completion items


def quiet(complete: Callable[..., Items]) -> Callable[..., Items]:
    """A completion that fails completes nothing: a traceback in the middle of a command line
    helps nobody."""

    @functools.wraps(complete)
    def wrapper(*args: Any, **kwargs: Any) -> Items:
        try:
            return complete(*args, **kwargs)
        except Exception:
            return []

    return wrapper


def _root() -> str:
    from .. import paths

    return paths.state_dir()


def _listed(folder: str, suffix: str = ".json") -> list[str]:
    from ..job.model import NAME_CHARS

    try:
        entries = os.listdir(folder)
    except OSError:
        return []
    return [e[:-len(suffix)] for e in entries if e.endswith(suffix) and set(e[:-len(suffix)]) <= NAME_CHARS
            and not e.startswith(".")]


def installed(incomplete: str) -> Items:
    """Installed jobs: what install (again), export and the lease commands take."""
    from .. import paths

    return sorted(n for n in _listed(paths.jobs_dir(_root())) if n.startswith(incomplete))


def known(incomplete: str) -> Items:
    """Every job status, logs, stop, start, restart and uninstall know: installed, run ad hoc, submitted."""
    from .. import paths

    root = _root()
    names = set(_listed(paths.jobs_dir(root))) | set(_listed(paths.run_dir(root)))
    batch = os.path.dirname(paths.job_state_dir(root, "x"))
    try:
        names.update(n for n in os.listdir(batch) if os.path.isdir(paths.batch_dir(root, n)))
    except OSError:
        pass
    return sorted(n for n in names if n.startswith(incomplete))


installed_job = quiet(installed)
known_job = quiet(known)


@quiet
def export_names(ctx: Any, incomplete: str) -> Items:
    """Installed jobs not already on the command line."""
    given = set(ctx.params.get("names") or []) if ctx is not None else set()
    return [n for n in installed(incomplete) if n not in given]


@quiet
def schedulers(incomplete: str) -> Items:
    from ..batch.schedulers import registry

    return [name for name in registry() if name.startswith(incomplete)]


def _entries(incomplete: str) -> list[tuple[str, str]]:
    """(path as typed, full path) of the entries of the folder `incomplete` points into."""
    folder, prefix = os.path.split(incomplete)
    where = os.path.expanduser(folder) if folder else "."
    found = []
    for entry in sorted(os.listdir(where)):
        if entry.startswith(prefix) and (prefix.startswith(".") or not entry.startswith(".")):
            found.append((os.path.join(folder, entry), os.path.join(where, entry)))
    return found


def _is_workdir(path: str) -> bool:
    return path.endswith(".farm") or os.path.exists(os.path.join(path, "farm.sqlite"))


@quiet
def farm_targets(incomplete: str) -> Items:
    """Work folders (LIST.farm, or any folder with a farm.sqlite) and the task lists that have one;
    other folders end in / to go down into them."""
    items: Items = []
    for typed, full in _entries(incomplete):
        if os.path.isdir(full):
            items.append(typed if _is_workdir(full) else typed + "/")
        elif os.path.isdir(full + ".farm"):
            items.append(typed)
    return items


@quiet
def tasklists(incomplete: str) -> Items:
    """Files that can be task lists, and folders to go down into (not the farms' own folders)."""
    items: Items = []
    for typed, full in _entries(incomplete):
        if os.path.isdir(full):
            if not _is_workdir(full):
                items.append(typed + "/")
        elif os.path.isfile(full) and not full.endswith((".sqlite", ".sqlite-journal", ".json", ".log")):
            items.append(typed)
    return items


def farm_words(incomplete: str) -> Items:
    """After `farm`: task lists, since `farm TASKLIST` is `farm run TASKLIST`."""
    return [] if incomplete.startswith("-") else tasklists(incomplete)


# --- run: its arguments are parsed by runargs, not by click --------------------------------

HIDDEN_RUN_OPTIONS = ("--cron", "--state-dir")  # what our crontab lines and install pass


def run_options() -> list[tuple[str, str]]:
    """run's options with their help line, read from run --help so the two never differ."""
    from ..tick.runargs import FLAGS, HELP, VALUES

    helps: dict[str, str] = {}
    for line in HELP.splitlines():
        match = re.match(r"\s+(-\S+?)(?:, (--\S+))?(?: [A-Z=]+)?\s{2,}(\S.*)", line)
        if match:
            for option in match.group(1, 2):
                if option:
                    helps[option] = match.group(3)
    options = [o for o in (*FLAGS, *VALUES) if o not in HIDDEN_RUN_OPTIONS and o.startswith("--")]
    return [(o, helps.get(o, "")) for o in sorted(set(options))]


@quiet
def run_words(words: list[str], incomplete: str) -> Items:
    """What `run WORDS... INCOMPLETE` can go on with: an option, an option's value, or NAME."""
    from ..job.model import RESTART_POLICIES
    from ..tick.runargs import VALUES

    if words[-1:] == ["="]:  # bash splits --restart=VALUE at the =
        words = words[:-1]
    positional = []
    skip = False
    for word in words:
        if skip:
            skip = False
        elif word == "--":
            return []  # the command: the shell completes its files
        elif word in VALUES:
            skip = True
        elif not word.startswith("-"):
            positional.append(word)
    if len(positional) > 1:
        return []  # click drops the --: a second word is the command (as runargs reads it)
    if incomplete.startswith("-") and "=" in incomplete:
        option, _, value = incomplete.partition("=")
        return [f"{option}={v}" for v in run_values(option, value, RESTART_POLICIES)]
    if words and words[-1] in VALUES:
        return run_values(words[-1], incomplete, RESTART_POLICIES)
    if incomplete.startswith("-"):
        return [(o, h) for o, h in run_options() if o.startswith(incomplete)]
    return installed(incomplete) if not positional else []


def run_values(option: str, incomplete: str, policies: tuple[str, ...]) -> list[str]:
    if option == "--restart":
        return [p for p in policies if p.startswith(incomplete)]
    return []  # a folder, a number, KEY=VALUE: the shell's own completion
