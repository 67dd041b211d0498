"""One build of a Job from what the user gave, for every way a job is made: `install`, `apply`
(a [jobs.NAME] table), `import` (an old crontab line), `run NAME -- COMMAND` (the tick's ad-hoc
run) and `submit` (a batch chain, which wraps the Job in batch.Spec).

    job = build_job(request, root, environ, jobs=store)           # install, apply, import
    job = build_job(run_args, root, environ, command=RUN)         # the tick's ad-hoc run
    job = build_job(submit_request, root, environ, command=SUBMIT)  # (options.RUN, options.SUBMIT)

`request` is any object with one attribute per option (options.py) its command takes, plus
`name` and `command`: an InstallRequest, the tick's RunArgs, a SubmitRequest. An option it does
not carry, or carries as None, has the schema's default; so every check below runs for every
caller, and a default always passes it. A bad value is a UserError (exit 2, one line) whose
`field` is the option it is about: `apply` points at that key's line. Nothing is changed
anywhere, except that an ad-hoc run makes its default lock folder (it takes the lock at once).

What differs by command is said once, here: where the lock lives (`lock_dir_for`) and when
the definition is dated. The caller passes what only it knows: the job store (a reinstall keeps
its default lock folder), whether the job writes log files (an ad-hoc run without --log-dir or
--detach writes to the terminal), and `driver`, the CLI's question whether a cluster database
can be reached from here (commands/cluster.py; the tick never asks it).

Standard library only, and nothing the tick does not load already: the tick imports this
module for an ad-hoc run. The schedule's check (python-crontab) runs only for a schedule given.
"""

from __future__ import annotations

import errno
import os

from .. import paths
from ..envvars import LOCK_DIR_ENV
from ..errors import UserError
from ..files import check_log_file, creatable_dir_problem
from ..lock.flock import check_lock_dir, check_lock_file, default_lock_dir, is_own_default, resolve_lock_dir
from ..timefmt import now_iso
from . import options
from .clusteropts import check_cluster
from .model import (
    Job,
    check_exec_size,
    check_hook,
    check_limit,
    check_mail,
    check_name,
    check_restart,
    check_schedule,
    parse_env,
    resolve_command,
    snapshot_env,
)
from .options import INSTALL, OPTIONS, RUN, SUBMIT, about

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing stays out of the tick's memory; annotations are strings
    from typing import Any, Callable, Optional, Protocol

    class Definitions(Protocol):
        def load(self, name: str, strict: bool = True) -> Optional[Job]: ...

def given_options(request: Any) -> dict[str, Any]:
    """Every option of the schema -> the value `request` gives it, or its default. `cluster` and
    `lease` stay None when not given: their defaults depend on the environment and on each other."""
    values: dict[str, Any] = {}
    for opt in OPTIONS.values():
        value = getattr(request, opt.name, None)
        if value is None and not opt.unset:
            value = opt.default
        values[opt.name] = value
    values["env"] = list(values["env"] or [])  # KEY=VALUE items; the schema's default is the TOML table's {}
    return values


def build_job(request: Any, root: str, environ: dict[str, str], *, command: str = INSTALL,
              jobs: Optional[Definitions] = None, logs: bool = True,
              driver: Optional[Callable[[str], str]] = None) -> Job:
    """Check every input of `request` and build the definition (see the module's docstring).
    `environ` is the shell the job is made from: install keeps its PATH and loader variables
    (model.SNAPSHOT_ENV) and reads $WATCHDOG_SINGLETON_CLUSTER there."""
    given = given_options(request)
    with about("name"):
        name = check_name(request.name)
    schedule = given["schedule"]
    if schedule != OPTIONS["schedule"].default:  # the default is valid, and run's tick cannot load python-crontab
        with about("schedule"):
            schedule = check_schedule(schedule)
    env = snapshot_env(environ)
    with about("env"):
        env.update(parse_env(given["env"]))
    workdir = os.path.abspath(given["workdir"] or os.getcwd())
    if not os.path.isdir(workdir):
        raise UserError(f"working directory {workdir} does not exist", field="workdir")
    if not os.access(workdir, os.X_OK):  # else the first start fails, and every tick after it
        raise UserError(f"cannot enter working directory {workdir}: {os.strerror(errno.EACCES)}", field="workdir")
    with about("command"):
        argv = resolve_command(list(request.command), workdir, env.get("PATH"))
    check_numbers(given)
    check_kind(given, schedule)
    cluster, lease = check_cluster(given["cluster"], given["lease"], given["standby"], given["rotate"],
                                   given["sync"], environ)
    if cluster and driver is not None:
        problem = driver(cluster)
        if problem:
            raise UserError(problem, field="cluster")
    if cluster and given["lean"]:
        raise UserError("--lean cannot hold a cluster lease: the supervisor renews it (drop --lean)", field="lean")
    if given["shared"] and given["lean"]:
        raise UserError("--shared is not for --lean, which keeps no supervisor (drop one)", field="shared")
    check_restart(given["restart"])
    check_exec_size(argv, env)  # its error says whether the command or env is too big
    lock_dir = lock_dir_for(command, name, given, root, jobs)
    stdout_log, stderr_log = log_files(name, given, root) if logs else ("", "")
    with about("on_failure"):
        on_failure = [] if given["on_failure"] == [] else check_hook(given["on_failure"])
    with about("mail"):
        mail = check_mail(given["mail"]) if given["mail"] else ""
    return Job(name=name, command=argv, workdir=workdir, schedule=schedule, env=env,
               **{key: given[key] for key in PLAIN}, periodic=given["periodic"] or given["every"] > 0,
               cluster=cluster, lease=lease, applied_from=getattr(request, "applied_from", ""),
               state_folder=paths.job_state_dir(root, name), stdout_log=stdout_log, stderr_log=stderr_log,
               lock_dir=lock_dir, on_failure=on_failure, mail=mail, enabled=True,
               installed_at=now_iso() if command == INSTALL else "")


# The options a Job takes as given (their checks above); the others are resolved first.
PLAIN = ("grace", "restart", "backoff_initial", "backoff_max", "min_uptime", "forking", "settle", "every",
         "timeout", "jitter", "catch_up", "loop", "max_lifetime", "sync", "standby", "rotate", "log_max_bytes",
         "log_backups", "allow_network_fs", "lean", "shared", "notify_every")


def check_numbers(given: dict[str, Any]) -> None:
    """Every number finite and within its range (options.py): nan or inf would hang a stop or
    crash the supervisor, and a tiny --min-uptime would restart hundreds of times a second."""
    for opt in OPTIONS.values():
        value = given[opt.name]
        if opt.high is None or value is None or opt.name == "lease":  # the lease: check_cluster
            continue
        low = (opt.low_from, given[options.BY_FLAG[opt.low_from].name]) if opt.low_from else None
        check_limit(opt.flag, value, low=low)


def check_kind(given: dict[str, Any], schedule: str) -> None:
    """The options of periodic jobs go with --periodic, and those of daemons without it."""
    if not (given["periodic"] or given["every"] > 0):
        for name, option, value in (("timeout", "--timeout", given["timeout"]), ("jitter", "--jitter", given["jitter"]),
                                    ("loop", "--loop", given["loop"]),
                                    ("catch_up", "--catch-up once", given["catch_up"] == "once"),
                                    ("sync", "--sync", given["sync"])):
            if value:
                raise UserError(f"{option} is for periodic jobs: add --periodic (or --every SECONDS)", field=name)
        return
    if given["catch_up"] not in ("none", "once"):
        raise UserError(f"--catch-up {given['catch_up']}: must be none or once", field="catch_up")
    if given["max_lifetime"]:
        raise UserError("--max-lifetime is for daemons kept alive; a periodic run has --timeout",
                        field="max_lifetime")
    if given["forking"] or given["lean"]:
        raise UserError("--forking and --lean are for daemons kept alive, not periodic jobs",
                        field="forking" if given["forking"] else "lean")
    if given["every"] > 0 and schedule != "* * * * *":
        raise UserError("give --every SECONDS or --schedule EXPR, not both", field="every")
    if schedule == "@reboot" and not given["every"]:
        raise UserError("a periodic job cannot run @reboot: use --every SECONDS or a 5-field --schedule",
                        field="schedule")


def lock_dir_for(command: str, name: str, given: dict[str, Any], root: str, jobs: Optional[Definitions]) -> str:
    """The job's lock folder, checked; "" for a batch chain (its lock is on the node, batch/).

    Given: that folder; an ad-hoc run's follows our recorded default when it names an old one of
    ours that is gone or taken, as a stored definition's does (a batch script passes the old
    fixed name). Not given: the default; a reinstalled job keeps the default folder it has (a copy
    running under it goes on undisturbed); an ad-hoc run makes it now (install's is made once
    the definition is saved: lock.flock.commit_lock_dir)."""
    if command == SUBMIT:
        return ""
    allow, wanted = given["allow_network_fs"], given["lock_dir"]
    lock_dir: str
    if wanted:
        lock_dir = os.path.abspath(wanted)
        if command == RUN:
            lock_dir = resolve_lock_dir(lock_dir, root)
    else:
        previous = jobs.load(name, strict=False) if jobs is not None else None
        keep = previous is not None and is_own_default(previous.lock_dir) and not os.environ.get(LOCK_DIR_ENV)
        lock_dir = previous.lock_dir if keep and previous is not None else \
            default_lock_dir(root, create=command == RUN)
    with about("lock_dir"):
        check_usable_lock_dir(lock_dir, allow)
        check_lock_file(lock_dir, name)
    return lock_dir


def check_usable_lock_dir(lock_dir: str, allow_network_fs: bool) -> None:
    check_lock_dir(lock_dir, allow_network_fs)
    problem = creatable_dir_problem(lock_dir)
    if problem:
        raise UserError(f"lock folder {lock_dir} cannot be used: {problem}")


def log_files(name: str, given: dict[str, Any], root: str) -> tuple[str, str]:
    """NAME's stdout and stderr log files, checked: --stdout-log/--stderr-log, else in --log-dir
    (default: the state folder's logs/)."""
    log_dir = os.path.abspath(given["log_dir"]) if given["log_dir"] else paths.default_log_dir(root)
    problem = creatable_dir_problem(log_dir)
    if problem:
        raise UserError(f"log folder {log_dir} cannot be used: {problem}", field="log_dir")
    stdout_log, stderr_log = paths.log_files(log_dir, name)
    stdout_log = os.path.abspath(given["stdout_log"]) if given["stdout_log"] else stdout_log
    stderr_log = os.path.abspath(given["stderr_log"]) if given["stderr_log"] else stderr_log
    for log, key in ((given["stdout_log"], "stdout_log"), (given["stderr_log"], "stderr_log")):
        if log and not os.path.isdir(os.path.dirname(os.path.abspath(log))):
            raise UserError(f"log file {os.path.abspath(log)}: its folder does not exist", field=key)
    for log, explicit, key in ((stdout_log, given["stdout_log"], "stdout_log"),
                               (stderr_log, given["stderr_log"], "stderr_log")):
        key = key if explicit else "log_dir"
        problem = check_log_file(log)
        if problem:
            raise UserError(problem, field=key)
        if os.path.exists(log) and not os.access(log, os.W_OK):
            raise UserError(f"log file {log} is not writable", field=key)
    return stdout_log, stderr_log
