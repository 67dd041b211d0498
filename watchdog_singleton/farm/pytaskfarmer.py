"""Taking over a PyTaskFarmer campaign: what its work folder says finished or failed is recorded
here, so only the rest runs.

    farm tasks.txt --from-pytaskfarmer tasks.txt_workdir

What PyTaskFarmer 0.1.0 (its default ListTaskList and BasicRunner) writes, from its source:
- A task is a line of the list that does not begin with `#` and is not blank, stripped; its ID
  is its index among those lines, from 0 (not its line number: comments and blank lines do not
  count). A line `  # x` is a task there (only a `#` in the first column makes a comment) and a
  comment here.
- The work folder (`--workdir`, default `TASKLIST_workdir`) holds `toprocess`, `finished` and
  `failed`, each line `ID COMMAND`; a task goes to `finished` on exit 0, `failed` otherwise.
  A task whose worker was killed is in none of them (PyTaskFarmer loses it); here it runs again.
- `logs/log_ID` (a task's output), `timeline.json` (Chrome trace events) and `lock` (an flock
  held while a file is rewritten; under `$SCRATCH`, `$TMP` or `$TMPDIR` as `md5(folder)_lock`
  when one is set).

A record is matched to a task of the list as it stands by its ID and its command: the ID-th
task must still be that command. A list edited since (lines inserted above) still matches a
command that occurs once in the list; any other record matches nothing and its task runs here.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from typing import Any, Iterable, NamedTuple, Optional

from ..errors import UserError
from . import tasklist
from .store import FAILED_STATE, FINISHED, Store

WORKDIR_SUFFIX = "_workdir"
FILES = ("toprocess", "finished", "failed")
RECORD_NAME = "pytaskfarmer.json"  # in our work folder: which campaigns were taken over, and when
# An explicit "from" in status and --json; the store alone tells imported tasks by attempts == 0.
ORIGIN = "pytaskfarmer"


class Campaign(NamedTuple):
    folder: str
    finished: dict[int, str]  # PyTaskFarmer's ID -> the command it recorded
    failed: dict[int, str]
    toprocess: Optional[set[int]]  # None: no toprocess file (a campaign never started)
    malformed: int  # lines that are not `ID COMMAND` (a write cut short)


class TakeOver(NamedTuple):
    finished: int  # recorded here as finished (not run again)
    failed: int
    unmatched: int  # records that name no task of the list as it stands
    already: int  # matched tasks this farm had already run or recorded
    malformed: int


def default_folder(tasklist_path: str) -> str:
    """PyTaskFarmer's own default work folder for a list."""
    return f"{tasklist_path}{WORKDIR_SUFFIX}"


def is_folder(path: str) -> bool:
    return os.path.isdir(path) and any(os.path.isfile(os.path.join(path, name)) for name in FILES)


def _read_ids(path: str) -> tuple[dict[int, str], int]:
    records: dict[int, str] = {}
    malformed = 0
    try:
        f = open(path, encoding="utf-8", errors="surrogateescape")
    except FileNotFoundError:
        return records, 0
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror}") from None
    with f:
        for line in f:
            if not line.endswith("\n"):
                malformed += bool(line)  # cut short mid-write: the task did not finish for sure
                continue
            first, _, command = line.rstrip("\n").partition(" ")
            if not first.isdigit():
                malformed += 1
                continue
            records[int(first)] = command
    return records, malformed


def read(folder: str) -> Campaign:
    """A PyTaskFarmer work folder's records; bad input (not such a folder, not the user's) is a UserError."""
    if not os.path.exists(folder):
        raise UserError(f"--from-pytaskfarmer {folder} does not exist")
    if not os.path.isdir(folder):
        raise UserError(f"--from-pytaskfarmer {folder} is not a folder")
    if not is_folder(folder):
        raise UserError(f"--from-pytaskfarmer {folder} is not a PyTaskFarmer work folder "
                        f"(it holds no {', '.join(FILES)})")
    me = os.geteuid()
    for name in FILES:
        path = os.path.join(folder, name)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            continue
        if st.st_uid not in (me, 0) or st.st_mode & 0o002:
            # Its records decide which tasks never run: only the user's own may.
            raise UserError(f"--from-pytaskfarmer: {path} is another user's or anyone may write it; "
                            "copy the folder to one of yours and take that over")
    finished, bad_finished = _read_ids(os.path.join(folder, "finished"))
    failed, bad_failed = _read_ids(os.path.join(folder, "failed"))
    toprocess: Optional[set[int]] = None
    if os.path.isfile(os.path.join(folder, "toprocess")):
        todo, _ = _read_ids(os.path.join(folder, "toprocess"))
        toprocess = set(todo)
    return Campaign(folder, finished, failed, toprocess, bad_finished + bad_failed)


def ptf_tasks_of(lines: Iterable[str]) -> list[str]:
    """A list's tasks as PyTaskFarmer numbers them: index = its ID."""
    return [line.strip() for line in lines if not line.startswith("#") and line.strip()]


def ptf_tasks(tasklist_path: str) -> list[str]:
    try:
        # Universal newlines, as PyTaskFarmer reads it.
        with open(tasklist_path, encoding="utf-8", errors="surrogateescape") as f:
            return ptf_tasks_of(f)
    except OSError as exc:
        raise UserError(f"cannot read task list {tasklist_path}: {exc.strerror}") from None


def still_running(folder: str) -> bool:
    """PyTaskFarmer holds its lock only while it rewrites a file, so this catches a running one
    only sometimes; the flock costs nothing and a positive answer is certain."""
    places = [os.path.join(folder, "lock")]
    for var in ("SCRATCH", "TMP", "TMPDIR"):  # PyTaskFarmer's lock_area, first set wins
        if var in os.environ:
            import hashlib

            digest = hashlib.md5(os.path.abspath(folder).encode()).hexdigest()
            places.append(f"{os.environ[var]}/{digest}_lock")
            break
    for path in places:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            if os.fstat(fd).st_uid != os.getuid():
                continue  # not our PyTaskFarmer's: another user's file (in a shared $TMP) blocks nothing
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        finally:
            os.close(fd)
    return False


def match(campaign: Campaign, commands: list[str]) -> tuple[list[tuple[str, str]], int]:
    """(our id, state) for each record that names a task of the list, and how many name none.
    `commands` are the list's tasks in PyTaskFarmer's numbering (ptf_tasks)."""
    # Our id of each of PyTaskFarmer's tasks: its command's hash plus which copy it is, as
    # tasklist.parse counts them (a command that is a comment here has no id).
    ids: list[Optional[str]] = [None] * len(commands)
    where: dict[str, list[int]] = {}
    for task in tasklist.parse(f"{c}\n" for c in commands):
        ids[task.line - 1] = task.id
        where.setdefault(task.command, []).append(task.line - 1)
    found: dict[str, str] = {}
    unmatched = 0
    # Failed first, so a task recorded in both (rerun by hand after a failure) ends finished.
    for state, records in ((FAILED_STATE, campaign.failed), (FINISHED, campaign.finished)):
        for ptf_id, command in records.items():
            index: Optional[int] = ptf_id if ptf_id < len(commands) and commands[ptf_id] == command else None
            if index is None and len(where.get(command, ())) == 1:
                index = where[command][0]  # the list was edited: a command that occurs once is still itself
            tid = ids[index] if index is not None else None
            if tid is None:
                unmatched += 1
            else:
                found[tid] = state
    return sorted(found.items()), unmatched


def check(folder: str) -> Campaign:
    """The campaign to take over, or a UserError (exit 2) before anything is created."""
    campaign = read(folder)
    if still_running(folder):
        raise UserError(f"PyTaskFarmer still works in {folder} (its lock is held): stop it, then take over")
    return campaign


def take_over(store: Store, tasklist_path: str, campaign: Campaign, workdir: str) -> TakeOver:
    """Record the campaign's finished and failed tasks in `store` (which holds the list's tasks)."""
    done, unmatched = match(campaign, ptf_tasks(tasklist_path))
    finished = store.adopt((t, s) for t, s in done if s == FINISHED)
    failed = store.adopt((t, s) for t, s in done if s == FAILED_STATE)
    _remember(workdir, campaign.folder, finished, failed)
    return TakeOver(finished, failed, unmatched, len(done) - finished - failed, campaign.malformed)


def describe(result: TakeOver, folder: str) -> str:
    line = (f"farm: took over PyTaskFarmer's {folder}: {result.finished} finished and {result.failed} failed "
            "task(s) recorded, not to run again")
    notes = []
    if result.already:
        notes.append(f"{result.already} already recorded here")
    if result.unmatched:
        notes.append(f"{result.unmatched} record(s) match no line of the list as it is now: those run")
    if result.malformed:
        notes.append(f"{result.malformed} line(s) not `ID COMMAND` ignored")
    return line + (f" ({'; '.join(notes)})" if notes else "")


def _record_path(workdir: str) -> str:
    return os.path.join(workdir, RECORD_NAME)


def taken_over(workdir: str) -> list[dict[str, Any]]:
    """The campaigns taken over into this work folder: [{"from", "when", "finished", "failed"}]."""
    try:
        with open(_record_path(workdir), encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return []
    return [d for d in data if isinstance(d, dict)] if isinstance(data, list) else []


def _remember(workdir: str, folder: str, finished: int, failed: int) -> None:
    entries = taken_over(workdir)
    entries.append({"from": os.path.abspath(folder), "when": time.time(), "finished": finished, "failed": failed})
    path = _record_path(workdir)
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        with open(fd, "w", encoding="utf-8") as f:
            json.dump(entries, f, indent=1)
        os.replace(tmp, path)
    except OSError:
        # Only the status line's "from where" is lost: the store holds what matters.
        try:
            os.unlink(tmp)
        except OSError:
            pass


def notice(tasklist_path: str, workdir: str) -> Optional[str]:
    """One line when PyTaskFarmer's default work folder for this list is there and was not taken over."""
    folder = default_folder(tasklist_path)
    if not is_folder(folder):
        return None
    if any(e.get("from") == os.path.abspath(folder) for e in taken_over(workdir)):
        return None
    counts = []
    for name in ("finished", "failed"):
        try:
            with open(os.path.join(folder, name), "rb") as f:
                counts.append(f"{sum(1 for _ in f)} {name}")
        except OSError:
            counts.append(f"0 {name}")
    return (f"farm: {folder} is PyTaskFarmer's work folder for this list ({', '.join(counts)}): "
            f"to take its campaign over, not run those again, add --from-pytaskfarmer {folder}")
