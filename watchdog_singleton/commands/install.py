"""install: store NAME's definition, put its line in the crontab, start it now."""

from __future__ import annotations

import os
from typing import Optional

from .. import paths
from ..cron.crontab import fires_sparsely
from ..cron.hostinfo import cron_daemon_running
from ..envvars import LOCK_DIR_ENV
from ..errors import OK, UserError
from ..files import check_log_file, creatable_dir_problem
from ..job import options
from ..job.model import (
    RESTART_POLICIES,
    Job,
    check_exec_size,
    check_limit,
    check_name,
    check_schedule,
    parse_env,
    resolve_command,
    snapshot_env,
)
from ..job.notify import check_hook, check_mail
from ..job.options import about
from ..job.request import InstallRequest as InstallRequest  # also where callers have found it
from ..lock.flock import check_lock_dir, commit_lock_dir, default_lock_dir, is_own_default
from ..quoting import shell_join
from ..timefmt import now_iso
from .cluster import check_cron_driver, check_options, grace_note
from .common import Context, Echo, start_now, stop_processes, tell_to_reload


def check_numbers(req: InstallRequest) -> None:
    """Every number finite and within its range (options.py): nan or inf would hang a stop or
    crash the supervisor, and a tiny --min-uptime would restart hundreds of times a second."""
    for opt in options.for_command(options.INSTALL):
        value = getattr(req, opt.name)
        if opt.high is None or value is None or opt.name == "lease":  # the lease: check_options
            continue
        low = (opt.low_from, getattr(req, options.BY_FLAG[opt.low_from].name)) if opt.low_from else None
        check_limit(opt.flag, value, low=low)


def check_kind(req: InstallRequest, schedule: str) -> None:
    """The options of periodic jobs go with --periodic, and those of daemons without it."""
    periodic = req.periodic or req.every > 0
    if not periodic:
        for name, option, value in (("timeout", "--timeout", req.timeout), ("jitter", "--jitter", req.jitter),
                                    ("loop", "--loop", req.loop),
                                    ("catch_up", "--catch-up once", req.catch_up == "once"),
                                    ("sync", "--sync", req.sync)):
            if value:
                raise UserError(f"{option} is for periodic jobs: add --periodic (or --every SECONDS)", field=name)
        return
    if req.catch_up not in ("none", "once"):
        raise UserError(f"--catch-up {req.catch_up}: must be none or once", field="catch_up")
    if req.max_lifetime:
        raise UserError("--max-lifetime is for daemons kept alive; a periodic run has --timeout",
                        field="max_lifetime")
    if req.forking or req.lean:
        raise UserError("--forking and --lean are for daemons kept alive, not periodic jobs",
                        field="forking" if req.forking else "lean")
    if req.every > 0 and schedule != "* * * * *":
        raise UserError("give --every SECONDS or --schedule EXPR, not both", field="every")
    if schedule == "@reboot" and not req.every:
        raise UserError("a periodic job cannot run @reboot: use --every SECONDS or a 5-field --schedule",
                        field="schedule")


def build_job(req: InstallRequest, ctx: Context, environ: dict[str, str]) -> Job:
    """Check every input and build the definition; changes nothing anywhere. A UserError names
    the option it is about (`field`), for apply to point at the file's line."""
    with about("name"):
        name = check_name(req.name)
    with about("schedule"):
        schedule = check_schedule(req.schedule)
    env = snapshot_env(environ)
    with about("env"):
        env.update(parse_env(req.env))
    workdir = os.path.abspath(req.workdir or os.getcwd())
    if not os.path.isdir(workdir):
        raise UserError(f"working directory {workdir} does not exist", field="workdir")
    with about("command"):
        command = resolve_command(req.command, workdir, env.get("PATH"))
    check_numbers(req)
    check_kind(req, schedule)
    cluster, lease = check_options(req.cluster, req.lease, req.standby, req.rotate, req.sync, environ)
    if cluster and req.lean:
        raise UserError("--lean cannot hold a cluster lease: the supervisor renews it (drop --lean)", field="lean")
    if req.shared and (cluster or req.lean):
        raise UserError("--shared is not for " + ("a cluster job: its supervisor holds the lease (drop --shared)"
                                                  if cluster else "--lean, which keeps no supervisor (drop one)"),
                        field="shared")
    if req.restart not in RESTART_POLICIES:
        raise UserError(f"--restart must be one of {', '.join(RESTART_POLICIES)}", field="restart")
    check_exec_size(command, env)  # its error says whether the command or env is too big
    if req.lock_dir:
        with about("lock_dir"):
            check_usable_lock_dir(os.path.abspath(req.lock_dir), req.allow_network_fs)
    log_dir = os.path.abspath(req.log_dir) if req.log_dir else paths.default_log_dir(ctx.root)
    problem = creatable_dir_problem(log_dir)
    if problem:
        raise UserError(f"log folder {log_dir} cannot be used: {problem}", field="log_dir")
    stdout_log, stderr_log = paths.log_files(log_dir, name)
    stdout_log = os.path.abspath(req.stdout_log) if req.stdout_log else stdout_log
    stderr_log = os.path.abspath(req.stderr_log) if req.stderr_log else stderr_log
    for log, key in ((req.stdout_log, "stdout_log"), (req.stderr_log, "stderr_log")):
        if log and not os.path.isdir(os.path.dirname(os.path.abspath(log))):
            raise UserError(f"log file {os.path.abspath(log)}: its folder does not exist", field=key)
    for log, given, key in ((stdout_log, req.stdout_log, "stdout_log"), (stderr_log, req.stderr_log, "stderr_log")):
        key = key if given else "log_dir"
        problem = check_log_file(log)
        if problem:
            raise UserError(problem, field=key)
        if os.path.exists(log) and not os.access(log, os.W_OK):
            raise UserError(f"log file {log} is not writable", field=key)
    with about("on_failure"):
        on_failure = [] if req.on_failure is None or req.on_failure == [] else check_hook(req.on_failure)
    with about("mail"):
        mail = check_mail(req.mail) if req.mail else ""
    if req.lock_dir:
        lock_dir = os.path.abspath(req.lock_dir)
    else:
        # The default folder (made by commit_lock_dir once the job is saved). A job that has one
        # of our default folders keeps it: a copy running under it goes on undisturbed.
        previous = ctx.jobs.load(name, strict=False)
        keep = previous is not None and is_own_default(previous.lock_dir) and not os.environ.get(LOCK_DIR_ENV)
        lock_dir = previous.lock_dir if keep and previous is not None else \
            default_lock_dir(ctx.root, create=False)
        with about("lock_dir"):
            check_usable_lock_dir(lock_dir, req.allow_network_fs)
    return Job(name=name, command=command, workdir=workdir, schedule=schedule, env=env,
               grace=req.grace, restart=req.restart, backoff_initial=req.backoff_initial,
               backoff_max=req.backoff_max, min_uptime=req.min_uptime, stdout_log=stdout_log,
               stderr_log=stderr_log, log_max_bytes=req.log_max_bytes, log_backups=req.log_backups,
               lock_dir=lock_dir, allow_network_fs=req.allow_network_fs, lean=req.lean, shared=req.shared,
               forking=req.forking, settle=req.settle, periodic=req.periodic or req.every > 0,
               every=req.every, timeout=req.timeout, jitter=req.jitter, catch_up=req.catch_up, loop=req.loop,
               max_lifetime=req.max_lifetime, sync=req.sync, cluster=cluster, lease=lease, standby=req.standby,
               rotate=req.rotate, applied_from=req.applied_from,
               state_folder=paths.job_state_dir(ctx.root, name), on_failure=on_failure, mail=mail,
               notify_every=req.notify_every, enabled=True, installed_at=now_iso())


def check_usable_lock_dir(lock_dir: str, allow_network_fs: bool) -> None:
    check_lock_dir(lock_dir, allow_network_fs)
    problem = creatable_dir_problem(lock_dir)
    if problem:
        raise UserError(f"lock folder {lock_dir} cannot be used: {problem}")


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
    replace_running_copy(ctx, job, previous, echo)
    echo(start_now(ctx, job, f"{job.name} stays installed: cron tries again at the next tick; "
                             f"'watchdog-singleton uninstall {job.name}' removes it"))
    return OK


def needs_restart(old: Job, new: Job) -> bool:
    """Whether a copy running `old` must be restarted to run `new` (jobs.RESTART_FIELDS). Other
    changes (schedule, grace, restart policy, timeouts, ...) are saved, the crontab line is
    rewritten, and a running supervisor is told to re-read its definition (SIGUSR2)."""
    return new.needs_restart_from(old)


def replace_running_copy(ctx: Context, job: Job, previous: Optional[Job], echo: Echo) -> None:
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
        elif not previous.same_definition(job) and tell_to_reload(state):
            echo(f"{job.name} runs on (pid {pid}) with the new settings")
        return
    old_lock = previous.lock_path if previous is not None else state.lock_path
    stop_processes(old_lock, state, previous.grace if previous is not None else job.grace)
    echo(f"stopped the running copy of {job.name} (pid {pid}: {shell_join(state.command or [])}), "
         "which ran an older definition")
