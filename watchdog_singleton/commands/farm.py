"""farm, farm status, farm retry, farm trace: run a task list exactly once, and look at it."""

from __future__ import annotations

import json
import os
import time
from typing import Callable, NamedTuple, Optional

from ..errors import FAILED, OK, SOME_FAILED, STORAGE_FAILED, UserError
from ..farm import place, pytaskfarmer, tasklist
from ..farm.pytaskfarmer import ORIGIN
from ..farm.store import STATES, Store
from ..farm.store.factory import check_place, open_store
from ..farm.trace import FILE_NAME as TIMELINE_NAME
from ..job import notify
from ..lock.flock import default_lock_dir

Echo = Callable[[str], None]


class FarmRequest(NamedTuple):
    tasklist: str
    workdir: Optional[str] = None
    workers: int = 4
    timeout: float = 0.0
    task_timeout: float = 0.0
    retries: int = 0
    db: Optional[str] = None
    runner: Optional[str] = None
    lease: float = 60.0
    grace: float = 10.0
    progress_every: float = 10.0
    from_pytaskfarmer: Optional[str] = None  # a PyTaskFarmer work folder to take over


def default_workdir(tasklist_path: str) -> str:
    return os.path.abspath(f"{tasklist_path}.farm")


def resolve_workdir(target: Optional[str]) -> str:
    """A work folder, or a task list whose default work folder (LIST.farm) is meant."""
    target = target or "."
    if os.path.isfile(target):
        return default_workdir(target)
    return os.path.abspath(target)


# every number option's range, as `farm run --help` states it (--grace as install's)
RANGES = (("--workers", "workers", 1, 4096), ("--timeout", "timeout", 0, 10 * 365 * 86400),
          ("--task-timeout", "task_timeout", 0, 10 * 365 * 86400), ("--retries", "retries", 0, 1000),
          ("--lease", "lease", 0.1, 86400), ("--grace", "grace", 0, 3600),
          ("--progress-every", "progress_every", 0.1, 86400))


def _check(req: FarmRequest) -> None:
    for flag, field, low, high in RANGES:
        value = getattr(req, field)
        if not low <= value <= high:  # nan too
            raise UserError(f"{flag} {value:g}: must be from {low:.12g} to {high:.12g}")
    if not os.path.isfile(req.tasklist):
        what = "is not a file" if os.path.exists(req.tasklist) else "does not exist"
        raise UserError(f"task list {req.tasklist} {what}")
    if not os.access(req.tasklist, os.R_OK):
        raise UserError(f"task list {req.tasklist} is not readable")
    tasklist.check(req.tasklist, os.stat(req.tasklist))
    tasklist.check_lines(req.tasklist)  # a NUL byte: refused before anything is created


def check_workdir(workdir: str) -> None:
    """Refuse (exit 2) a work folder, log folder or timeline that is not the user's alone, before
    anything is created: a farm runs what its folder's database holds, as the user."""
    place.check(workdir, "work folder", folder=True)
    place.check(os.path.join(workdir, "logs"), "log folder", folder=True)
    place.check(os.path.join(workdir, TIMELINE_NAME), "timeline")


def make_workdir(workdir: str) -> None:
    """The work folder and its logs/, 0700 whatever the umask (an existing work folder keeps its
    mode: it may be one of the user's own folders; the farm's files in it are 0600)."""
    created = False
    making = workdir
    try:
        if not os.path.isdir(workdir):
            os.makedirs(os.path.dirname(workdir), 0o700, exist_ok=True)
            place.private_folder(workdir, "work folder")
            created = True
        else:
            place.check(workdir, "work folder", folder=True)
        making = os.path.join(workdir, "logs")
        place.private_folder(making, "log folder")
    except OSError as exc:
        if created:
            try:
                os.rmdir(workdir)
            except OSError:
                pass
        raise UserError(f"cannot create {making}: {exc.strerror}", STORAGE_FAILED) from None


def farm_lock(workdir: str) -> tuple[object, str]:
    """The per-host lock of this work folder (one farm per folder per host) and its path."""
    from ..lock.flock import FlockLock, check_lock_dir

    lock_dir = default_lock_dir()
    check_lock_dir(lock_dir)
    name = "farm-" + tasklist.sha1_hex(os.path.realpath(workdir).encode())[:16]
    return FlockLock(lock_dir, name), os.path.join(lock_dir, f"{name}.lock")


def run(req: FarmRequest, echo: Echo, warn: Echo) -> int:
    from ..farm import runner as runner_mod
    from ..farm.workers import Farm, Options

    _check(req)
    workdir = os.path.abspath(req.workdir) if req.workdir else default_workdir(req.tasklist)
    check_workdir(workdir)
    runner = runner_mod.load(req.runner, workdir)
    campaign = pytaskfarmer.check(req.from_pytaskfarmer) if req.from_pytaskfarmer else None
    check_place(req.db, workdir)
    lock, marker = farm_lock(workdir)
    if not lock.try_acquire():  # type: ignore[attr-defined]
        raise UserError(f"another farm runs in {workdir} on this host", FAILED)
    store: Optional[Store] = None
    try:
        make_workdir(workdir)
        store = open_store(req.db, workdir, lease=req.lease)
        # At start the list is taken as complete: a last line without its newline is a task too.
        added = store.add(tasklist.read(req.tasklist, at_start=True))
        if added:
            warn(f"farm: {added} new task(s) from {req.tasklist}")
        if campaign is not None:
            taken = pytaskfarmer.take_over(store, req.tasklist, campaign, workdir)
            warn(pytaskfarmer.describe(taken, campaign.folder))
        else:
            notice = pytaskfarmer.notice(req.tasklist, workdir)
            if notice:
                warn(notice)
        options = Options(tasklist=os.path.abspath(req.tasklist), workdir=workdir, workers=req.workers,
                          timeout=req.timeout, task_timeout=req.task_timeout, retries=req.retries, lease=req.lease,
                          grace=req.grace, progress_every=req.progress_every, cwd=os.getcwd())
        code = Farm(options, store, runner, marker=f"{marker}#", echo=echo, warn=warn).run()
        if code == SOME_FAILED:  # inside a job with --on-failure or --mail: tell (notify.py)
            notify.from_environment("farm-failed", code, f"the farm of {req.tasklist} finished with failed tasks")
        return code
    finally:
        if store is not None:
            store.close()
        lock.release()  # type: ignore[attr-defined]


def _open(workdir: Optional[str], db: Optional[str]) -> tuple[str, Store]:
    folder = resolve_workdir(workdir)
    place.check(folder, "work folder", folder=True)
    return folder, open_store(db, folder, create=False)


def status(workdir: Optional[str], db: Optional[str], as_json: bool, echo: Echo) -> int:
    folder, store = _open(workdir, db)
    try:
        counts, rows = store.stats(), store.rows()
    finally:
        store.close()
    # Finished or failed without a run here: recorded from a PyTaskFarmer campaign taken over.
    imported = {r.id for r in rows if r.attempts == 0 and r.state in ("finished", "failed")}
    sources = [str(e.get("from")) for e in pytaskfarmer.taken_over(folder)]
    done = sum(1 for r in rows if r.id in imported and r.state == "finished")
    if as_json:
        echo(json.dumps({"workdir": folder, "counts": counts,
                         "imported": {ORIGIN: {"from": sources, "finished": done, "failed": len(imported) - done}},
                         "tasks": [{**r._asdict(), "from": ORIGIN if r.id in imported else "farm"} for r in rows]},
                        indent=2))
        return OK
    echo(f"{folder}: " + ", ".join(f"{counts[s]} {s}" for s in STATES))
    if imported:
        echo(f"imported from pytaskfarmer ({', '.join(sources) or 'a work folder'}): {done} finished, "
             f"{len(imported) - done} failed, not run here")
    now = time.time()
    shown = [r for r in rows if r.state != "finished" or r.attempts > 1]
    if shown:
        echo(f"{'ID':<16} {'LINE':>5} {'STATE':<9} {'TRIES':>5} {'CODE':>5} {'WHEN':>8}  COMMAND")
    for r in shown:
        when = f"{now - (r.ended or r.started or now):.0f}s ago" if (r.ended or r.started) else "-"
        when = "imported" if r.id in imported else when
        code = "-" if r.code is None else str(r.code)
        echo(f"{r.id:<16} {r.line:>5} {r.state:<9} {r.attempts:>5} {code:>5} {when:>8}  {r.command[:60]}")
    return OK


def retry(workdir: Optional[str], db: Optional[str], ids: list[str], echo: Echo) -> int:
    folder, store = _open(workdir, db)
    try:
        if ids:  # a mistyped id is bad input, not "0 retried"
            known = {r.id for r in store.rows()}
            unknown = [i for i in ids if i not in known]
            if unknown:
                raise UserError(f"no task {', '.join(unknown)} in {folder} (farm status lists them)")
        n = store.retry(ids)
    finally:
        store.close()
    echo(f"{n} failed task(s) back to todo")
    return OK


def trace(workdir: Optional[str], output: Optional[str], echo: Echo) -> int:
    from ..farm.trace import write_trace

    folder = resolve_workdir(workdir)
    check_workdir(folder)  # a planted folder's timeline is not the user's, nor a place to write to
    target = output or os.path.join(folder, "trace.json")
    n = write_trace(folder, target)
    echo(f"{target}: {n} attempt(s); open it in https://ui.perfetto.dev or chrome://tracing")
    return OK
