"""uninstall: remove NAME's crontab line and definition, then stop everything of it."""

from __future__ import annotations

from .. import paths
from ..errors import NO_SUCH_JOB, OK, UserError
from ..jobs import check_name
from .common import Context, Echo, stop_processes


def uninstall(name: str, ctx: Context, echo: Echo, keep_running: bool = False) -> int:
    check_name(name)
    job, state = ctx.jobs.load(name), ctx.states.load(name)
    editor = ctx.editor()
    has_line = name in editor.entries()
    if job is None and state is None and not has_line:
        raise UserError(f"no such job: {name}", NO_SUCH_JOB)
    if has_line:
        editor.set_entry(name, None)
    ctx.jobs.delete(name)
    lock_path = job.lock_path if job else (state.lock_path if state else
                                           paths.lock_file(paths.default_lock_dir(), name))
    if keep_running:
        echo(f"uninstalled {name}; left running")
        return OK
    found = stop_processes(lock_path, state, job.grace if job else 10.0)
    ctx.states.delete(name)
    echo(f"uninstalled {name}" + ("; stopped its processes" if found else ""))
    return OK
