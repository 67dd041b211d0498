"""install: store NAME's definition, put its line in the crontab, start it now."""

from __future__ import annotations

import os
from typing import Optional

from ..cron.crontab import fires_sparsely
from ..cron.hostinfo import cron_daemon_running
from ..errors import OK
from ..job import build
from ..job.model import Job
from ..job.request import InstallRequest as InstallRequest  # also where callers have found it
from ..lock.flock import commit_lock_dir
from ..quoting import shell_join
from .cluster import check_cron_driver, driver_problem, grace_note
from .common import Context, Echo, not_reloaded, start_now, stop_processes, tell_to_reload


def build_job(req: InstallRequest, ctx: Context, environ: dict[str, str]) -> Job:
    """install's (and apply's, import's, export's) way into the one build (job/build.py): the
    context's store, and the CLI's question whether psycopg can be imported here. Changes
    nothing anywhere; a UserError names the option it is about (`field`)."""
    return build.build_job(req, ctx.root, environ, jobs=ctx.jobs, driver=driver_problem)


def install(req: InstallRequest, ctx: Context, echo: Echo, warn: Echo,
            environ: Optional[dict[str, str]] = None) -> int:
    job = build_job(req, ctx, dict(os.environ) if environ is None else environ)
    if job.cluster:
        check_cron_driver(ctx.python, ctx.isolation())
    editor = ctx.editor()
    editor.io.read()  # no crontab binary, or cron.allow/deny: say so before anything changes
    job.lock_dir = commit_lock_dir(ctx.root, job.lock_dir)
    line = ctx.cron_line(job)
    previous = ctx.jobs.load(job.name)
    if previous is not None:
        job.installed_at = previous.installed_at or job.installed_at
    ctx.jobs.save(job)
    try:
        editor.set_entry(job.name, line)
    except BaseException:
        if previous is None:
            ctx.jobs.delete(job.name)
        else:
            ctx.jobs.save(previous)
        raise
    when = (f"every {job.every:g} s" if job.every else f"periodic {job.schedule}" if job.periodic else job.schedule)
    echo(f"installed {job.name}: {when} {shell_join(job.command)}")
    if job.restart == "always" and not job.lean and not job.periodic and fires_sparsely(job.schedule):
        warn(f"warning: --restart always with schedule '{job.schedule}': the supervisor restarts it at once "
             "after every exit; for a job that should run once per due time use --periodic")
    if cron_daemon_running() is False:
        warn("warning: no cron daemon runs on this host: the entry will not fire until one does")
    if job.cluster:
        note = grace_note(job.name, job.lease, job.grace)
        if note:
            warn(note)
    if not req.start:
        return OK
    replace_running_copy(ctx, job, previous, echo, warn)
    echo(start_now(ctx, job, f"{job.name} stays installed: cron tries again at the next tick; "
                             f"'watchdog-singleton uninstall {job.name}' removes it"))
    return OK


def needs_restart(old: Job, new: Job) -> bool:
    """Whether a copy running `old` must be restarted to run `new` (jobs.RESTART_FIELDS). Other
    changes (schedule, grace, restart policy, timeouts, ...) are saved, the crontab line is
    rewritten, and a running supervisor is told to re-read its definition (SIGUSR2)."""
    return new.needs_restart_from(old)


def replace_running_copy(ctx: Context, job: Job, previous: Optional[Job], echo: Echo, warn: Echo) -> None:
    """A copy that runs already is adopted when it runs what the new definition says, and
    stopped otherwise (a changed definition, or one left by `uninstall --keep-running`)."""
    state = ctx.states.load(job.name)
    if state is None or not (state.supervisor_alive() or state.daemon_alive()):
        return
    pid = state.pid or state.supervisor_pid
    if previous is not None:
        same = not needs_restart(previous, job)
    else:  # left running by `uninstall --keep-running`: only its command and lock are known
        same = state.command == job.command and state.lock_path == job.lock_path
    if same:
        if previous is None:
            echo(f"adopted the copy of {job.name} left running (pid {pid}): it runs the same command")
        elif not previous.same_definition(job):
            told = tell_to_reload(state)
            if told:
                echo(f"{job.name} runs on (pid {pid}) with the new settings")
            elif told is False:
                warn(not_reloaded(job.name))
        return
    old_lock = previous.lock_path if previous is not None else state.lock_path
    stop_processes(old_lock, state, previous.grace if previous is not None else job.grace)
    echo(f"stopped the running copy of {job.name} (pid {pid}: {shell_join(state.command or [])}), "
         "which ran an older definition")
