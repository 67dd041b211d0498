"""uninstall: remove NAME's definition, stop everything of it, then remove its crontab line."""

from __future__ import annotations

import os
import stat
from typing import Any, Optional

from .. import paths
from ..errors import FAILED, OK, UserError
from ..job.model import check_name
from ..lock.flock import default_lock_dir
from .common import Context, Echo, reach_house, stop_processes


def purge(name: str, ctx: Context, logs: list[str]) -> list[str]:
    """Remove NAME's checkpoint folder and its log files (with their rotated copies); returns what
    was removed."""
    import glob
    import shutil

    removed = []
    folder = paths.job_state_dir(ctx.root, name)
    if os.path.isdir(folder) and not os.path.islink(folder):
        shutil.rmtree(folder)
        removed.append(folder)
    for log in logs:
        # The rotated copies are LOG.1 ... LOG.N exactly: not LOG.2023-archive.txt beside them.
        rotated = [p for p in glob.glob(glob.escape(log) + ".[0-9]*") if p[len(log) + 1:].isdigit()]
        for path in [log] + sorted(rotated):
            try:
                st = os.lstat(path)
                if stat.S_ISREG(st.st_mode) and st.st_uid == os.getuid():  # another user's: not ours to remove
                    os.unlink(path)
                    removed.append(path)
            except OSError:  # gone meanwhile, or a sticky folder that is not ours
                continue
    return removed


def uninstall(name: str, ctx: Context, echo: Echo, keep_running: bool = False, purge_files: bool = False) -> int:
    check_name(name)
    if purge_files and keep_running:
        raise UserError("--purge removes what a running copy uses: not with --keep-running")
    job, state = ctx.jobs.load(name, strict=False), ctx.states.load(name)  # a broken definition goes too
    known = job is not None or ctx.jobs.exists(name)
    if not known:
        from ..batch import load_record

        record = load_record(ctx.root, name)
        if record is not None:
            return _uninstall_chain(name, record, ctx, echo, keep_running, purge_files)
    editor = ctx.editor()
    try:
        has_line: Optional[bool] = name in editor.entries()
    except UserError:
        if not known and state is None:
            raise
        has_line = None  # crontab(1) refused (cron.deny): stopping must not depend on it
    if not known and state is None and not has_line:
        raise ctx.jobs.no_such_job(name)
    if not keep_running:
        reach_house(state)  # a shared job's live resident must answer first, or nothing changes
    # The definition goes first: a tick of a line still in the crontab then finds nothing to run.
    ctx.jobs.delete(name)
    lock_path = job.lock_path if job else (state.lock_path if state else
                                           paths.lock_file(default_lock_dir(), name))
    found = 0
    if not keep_running:
        found = stop_processes(lock_path, state, job.grace if job else 10.0)
        ctx.states.delete(name)
    done = f"uninstalled {name}" + ("; left running" if keep_running else
                                    "; stopped its processes" if found else "")
    if purge_files:
        logs = sorted({p for p in ((job.stdout_log, job.stderr_log) if job else
                                   (state.stdout_log, state.stderr_log) if state else ()) if p})
        removed = purge(name, ctx, logs)
        done += f"; removed its state folder and logs ({len(removed)} paths)" if removed else ""
    if has_line is not False:
        try:
            editor.set_entry(name, None)
        except UserError as exc:
            raise UserError(f"{done}, but its crontab line is still there (it does nothing now): {exc}",
                            FAILED) from None
    echo(done)
    return OK


def _uninstall_chain(name: str, record: dict[str, Any], ctx: Context, echo: Echo, keep_running: bool,
                     purge_files: bool) -> int:
    """A submitted batch chain: cancel it (nothing of it queued), then remove its batch folder and
    run state; --purge also its checkpoint folder and logs. It has no crontab line."""
    from ..batch.chain import remove_chain

    if keep_running:
        raise UserError(f"--keep-running: {name} is a {record.get('scheduler')} chain, which only the scheduler "
                        "runs: uninstall cancels it (or leave it submitted)")
    stopped = remove_chain(ctx.root, name)
    ctx.states.delete(name)
    done = f"uninstalled {name}: {stopped}"
    if purge_files:
        logs = sorted({str(p) for p in (record.get("stdout_log"), record.get("stderr_log")) if p})
        removed = purge(name, ctx, logs)
        done += f"; removed its state folder and logs ({len(removed)} paths)" if removed else ""
    echo(done)
    return OK
