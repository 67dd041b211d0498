"""What a job is (name, command, schedule, paths, policies), how input is checked, where it is stored."""

from __future__ import annotations

import math
import os
import time

from .. import files, paths
from ..errors import FAILED, NO_SUCH_JOB, UserError
from . import options
from .options import OPTIONS
from .record import REQUIRED, Record

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing stays out of the resident supervisor's memory; annotations are strings
    from typing import Optional

# Names are checked without `re`, which the resident supervisor does not load.
NAME_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.@+-")
ENV_KEY_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_")
AT_WORDS = {"@reboot", "@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"}
RESTART_POLICIES = ("always", "on-failure", "never")

# What decides how a program is found and loaded: kept from the install-time shell so the job
# runs the same under cron's PATH=/usr/bin:/bin as it did when the user tried it.
SNAPSHOT_ENV = ("PATH", "LD_LIBRARY_PATH", "PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "CONDA_PREFIX",
                "LANG", "LC_ALL", "LC_CTYPE", "TZ")

DEFAULT_LOG_MAX_BYTES = OPTIONS["log_max_bytes"].default
DEFAULT_LOG_BACKUPS = OPTIONS["log_backups"].default

# The range of every number option (options.py): install, run and logs check against it.
LIMITS = options.LIMITS

# What a running copy was started with: a change to any of these needs a restart to take effect
# (options.py marks them). The command, its environment and folder; the lock (a copy under the
# old lock would not keep a second copy under the new one out); how the copy runs (periodic,
# lean, forking); its cluster settings.
RESTART_FIELDS = options.RESTART_FIELDS


def _default(name: str) -> object:
    return OPTIONS[name].default


class Job(Record):
    """One job's definition: what to run, when cron calls the launcher, and the policies."""

    FIELDS = (
        ("name", REQUIRED),
        ("command", REQUIRED),
        ("workdir", REQUIRED),
        ("schedule", _default("schedule")),
        ("env", {}),
        ("grace", _default("grace")),
        ("restart", _default("restart")),
        ("backoff_initial", _default("backoff_initial")),
        ("backoff_max", _default("backoff_max")),
        ("min_uptime", _default("min_uptime")),
        ("forking", _default("forking")),
        ("settle", _default("settle")),
        ("periodic", _default("periodic")),
        ("every", _default("every")),
        ("timeout", _default("timeout")),
        ("jitter", _default("jitter")),
        ("catch_up", _default("catch_up")),
        ("loop", _default("loop")),
        ("max_lifetime", _default("max_lifetime")),
        ("sync", _default("sync")),
        ("cluster", ""),
        ("lease", _default("lease")),
        ("standby", _default("standby")),
        ("rotate", _default("rotate")),
        ("applied_from", ""),
        ("state_folder", ""),
        ("stdout_log", ""),
        ("stderr_log", ""),
        ("log_max_bytes", _default("log_max_bytes")),
        ("log_backups", _default("log_backups")),
        ("lock_dir", ""),
        ("allow_network_fs", _default("allow_network_fs")),
        ("lean", _default("lean")),
        ("shared", _default("shared")),
        ("enabled", True),
        ("installed_at", ""),
        ("on_failure", []),
        ("mail", _default("mail")),
        ("notify_every", _default("notify_every")),
    )
    name: str
    command: list[str]
    workdir: str
    schedule: str
    env: dict[str, str]
    grace: float
    restart: str
    backoff_initial: float
    backoff_max: float
    min_uptime: float  # a run shorter than this is a quick exit; BURST of them in a row start the backoff
    forking: bool  # the command puts itself in the background: follow the tree it leaves
    settle: float  # install, start and run --detach wait this long to see the daemon still running
    periodic: bool  # run COMMAND to completion at each due time, instead of keeping it alive
    every: float  # periodic: seconds from start to start, kept by the supervisor; 0: the schedule decides
    timeout: float  # periodic: a run is stopped (its whole tree) after this long; 0: PanDA's default
    jitter: float  # periodic: each run starts a fresh random [0, jitter] seconds after its due time
    catch_up: str  # periodic: "once" makes up one missed due time at start (systemd's Persistent=)
    loop: bool  # periodic: rerun at once while it exits 0, until the period has passed (PanDA's loop)
    max_lifetime: float  # keep-alive: restart gracefully after this long; 0: never
    sync: bool  # periodic: one run per period across hosts (needs a cluster)
    cluster: str  # postgresql://USER@HOST/DB: one copy across hosts on a lease there; "": one per host
    lease: float  # the cluster lease's duration in seconds (leases.Timing.for_lease)
    standby: bool  # cluster: while another host holds the lease, wait resident instead of leaving
    rotate: bool  # cluster: the hosts take turns, in name order, one run each
    applied_from: str  # the config file whose `apply` created this job; "" for jobs installed by hand
    state_folder: str  # WATCHDOG_SINGLETON_STATE_DIR: kept across restarts and reinstalls
    stdout_log: str
    stderr_log: str
    log_max_bytes: int
    log_backups: int
    lock_dir: str
    allow_network_fs: bool
    lean: bool
    shared: bool  # supervised by the user's shared resident (supervisor/house.py), not one of its own
    enabled: bool
    installed_at: str
    on_failure: list[str]  # a hook's argv, run when the job fails where nobody looks (notify.py); [] none
    mail: str  # failure mail to this address (or comma-separated list) through sendmail; "" none
    notify_every: float  # at most one failure notice per event kind this often (seconds)

    @property
    def supervised_schedule(self) -> bool:
        """Whether the resident supervisor keeps the due times (--every, --catch-up once), with
        cron's every-minute tick only keeping the supervisor alive; else cron's own schedule fires
        each run."""
        return self.periodic and (self.every > 0 or self.catch_up == "once")

    @property
    def cron_schedule(self) -> str:
        """What the crontab line says: the job's schedule, or every minute when the supervisor
        keeps the due times (the tick then only keeps the supervisor alive)."""
        return "* * * * *" if self.supervised_schedule else self.schedule

    @property
    def period(self) -> float:
        """Seconds between due times: --every, or the schedule's shortest gap (0 if unknown)."""
        if self.every > 0:
            return self.every
        from .schedule import shortest_gap

        return shortest_gap(self.schedule)

    @property
    def run_timeout(self) -> float:
        """A periodic run's time limit: --timeout, else PanDA's min(period * 3, period + 3600)."""
        if self.timeout > 0:
            return self.timeout
        period = self.period
        return min(period * 3, period + 3600) if period > 0 else 3600.0

    @property
    def lock_path(self) -> str:
        return paths.lock_file(self.lock_dir, self.name)

    def needs_restart_from(self, old: "Job") -> bool:
        return any(getattr(old, key) != getattr(self, key) for key in RESTART_FIELDS)

    def same_definition(self, other: "Job") -> bool:
        mine, theirs = self.to_dict(), other.to_dict()
        for volatile in ("enabled", "installed_at"):
            mine.pop(volatile)
            theirs.pop(volatile)
        return mine == theirs


def check_name(name: str) -> str:
    if not name:
        raise UserError("job name is empty")
    if "\n" in name or any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise UserError(f"job name {name!r} contains a newline or control character")
    if name.startswith("-"):
        raise UserError(f"job name {name!r} starts with '-'")
    if len(name) > 64:
        raise UserError(f"job name is {len(name)} characters long; at most 64")
    if name[0] in ".@+" or not set(name) <= NAME_CHARS:
        raise UserError(f"job name {name!r} may hold only letters, digits and _ . @ + - "
                        "and must not start with '.' or '-'")
    return name


def check_schedule(schedule: str) -> str:
    import re

    from crontab import CronSlices  # python-crontab validates; kept off the launcher's import path

    text = schedule.strip()
    if not re.fullmatch(r"[A-Za-z0-9*/,@ -]+", text or "?"):
        raise UserError(f"schedule {schedule!r} has characters a cron schedule cannot hold")
    if text.startswith("@"):
        if text not in AT_WORDS:
            raise UserError(f"schedule {schedule!r} is not one of {', '.join(sorted(AT_WORDS))}")
        return text
    text = " ".join(text.split())
    count = len(text.split())
    if count != 5:
        raise UserError(f"schedule {schedule!r} has {count} fields; cron needs 5 (minute hour day month weekday)")
    if not CronSlices.is_valid(text):
        raise UserError(f"schedule {schedule!r} is not a valid cron expression (a value is out of range?)")
    from .schedule import CronSchedule

    try:  # valid field by field, yet no date has it (30 February): it would never run
        CronSchedule(text).next_after(time.time())
    except ValueError:
        raise UserError(f"schedule {schedule!r} never fires: no date matches it") from None
    return text


def check_range(option: str, value: float, low: float, high: float, also: Optional[float] = None,
                low_text: str = "") -> float:
    """`value` if it is finite and within [low, high] (or equal to `also`); else a UserError naming
    the option, the value and the range (its `field` the option's, options.py). nan and inf pass
    float() and typer unchecked."""
    if value == also or (math.isfinite(value) and low <= value <= high):
        return value
    allowed = f"from {low_text or _num(low)} to {_num(high)}"
    if also is not None:
        allowed = f"{_num(also)}, or {allowed}"
    opt = options.BY_FLAG.get(option)
    raise UserError(f"{option} {_num(value)}: must be {allowed}", field=opt.name if opt is not None else "")


def check_limit(option: str, value: float, also: Optional[float] = None,
                low: Optional[tuple[str, float]] = None) -> float:
    """check_range against LIMITS[option]; `also` defaults to the option's own (options.py: 0 for
    "never"); `low` (its option, its value) replaces the lower bound."""
    table_low, high = LIMITS[option]
    opt = options.BY_FLAG.get(option)
    if also is None and opt is not None:
        also = opt.also
    if low is None:
        return check_range(option, value, table_low, high, also)
    return check_range(option, value, max(table_low, low[1]), high, also, f"{low[0]} ({_num(low[1])})")


def _num(value: float) -> str:
    if math.isfinite(value) and value == int(value) and abs(value) < 1e16:
        return str(int(value))
    return f"{value:g}"


def parse_env(items: list[str]) -> dict[str, str]:
    env = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise UserError(f"--env {item!r} is not KEY=VALUE")
        if not key or key[0].isdigit() or not set(key) <= ENV_KEY_CHARS:
            raise UserError(f"--env {item!r}: {key!r} is not a valid variable name")
        if "\0" in value:
            raise UserError(f"--env {key}: value holds a NUL byte")
        env[key] = value
    return env


def check_restart(value: str) -> str:
    """A restart policy (RESTART_POLICIES), or a UserError naming the value."""
    if value not in RESTART_POLICIES:
        raise UserError(f"--restart {value!r}: must be one of {', '.join(RESTART_POLICIES)}", field="restart")
    return value


def check_hook(value: str | list[str], option: str = "--on-failure") -> list[str]:
    """The hook's argv: a list as given, a string split as a shell splits words (run without one)."""
    if isinstance(value, str):
        import shlex

        try:
            argv = shlex.split(value)
        except ValueError as exc:
            raise UserError(f"{option} {value!r}: {exc} (it is split as a shell splits words)") from None
    else:
        argv = list(value)
    if not argv or not argv[0].strip():
        raise UserError(f"{option} is empty: give a command, e.g. {option} 'notify-send failed'")
    for word in argv:
        if "\n" in word or "\r" in word or "\0" in word:
            raise UserError(f"{option}: {word!r} holds a newline or NUL byte")
    return argv


def check_mail(value: str, option: str = "--mail") -> str:
    """One address or a comma-separated list: user@host or a local user, as cron's MAILTO."""
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise UserError(f"{option} {value!r}: holds a newline or control character")
    parts = [part.strip() for part in value.split(",")]
    for part in parts:
        if not part:
            raise UserError(f"{option} {value!r}: an empty address")
        if part.startswith("-") or any(c.isspace() or c in "<>()[]\\;:\"'" for c in part) or part.count("@") > 1 \
                or part.startswith("@") or part.endswith("@"):
            raise UserError(f"{option} {part!r} is not a mail address (user@host, or a local user name)")
    return ", ".join(parts)


# execve(2) fails with E2BIG past ARG_MAX (often 2 MiB, all of argv and the environment) and
# for any one string past 128 KiB. A job must start wherever it is installed, with room left
# for the variables we add: refuse well before either limit, at install, not at the first start.
EXEC_TOTAL_LIMIT = 256 * 1024
EXEC_STRING_LIMIT = 128 * 1024 - 1


def check_exec_size(command: list[str], env: dict[str, str]) -> None:
    """Refuse a command and environment too big for execve (E2BIG) on a stock Linux."""
    strings = [*command, *(f"{k}={v}" for k, v in env.items())]
    for text in strings:
        size = len(text.encode(errors="surrogateescape"))
        if size > EXEC_STRING_LIMIT:
            about = "command" if text in command else "env"
            what = "a command argument" if about == "command" else f"--env {text.partition('=')[0]}"
            raise UserError(f"{what} is {size} bytes long; execve takes at most {EXEC_STRING_LIMIT} (E2BIG)",
                            field=about)
    # Each string also costs its NUL and a pointer in the new process's stack.
    total = sum(len(t.encode(errors="surrogateescape")) + 1 + 8 for t in strings)
    if total > EXEC_TOTAL_LIMIT:
        raise UserError(f"--env: the command and its {len(env)} variables take {total} bytes; at most "
                        f"{EXEC_TOTAL_LIMIT} are allowed, so that it can start (execve: E2BIG)", field="env")


def snapshot_env(environ: dict[str, str]) -> dict[str, str]:
    return {key: environ[key] for key in SNAPSHOT_ENV if environ.get(key)}


def resolve_command(command: list[str], workdir: str, search_path: Optional[str]) -> list[str]:
    """argv with argv[0] made absolute, the way the install-time shell would have found it."""
    if not command or not command[0]:
        raise UserError("no command given: put it after --, e.g. install web -- python -u daemon.py")
    for arg in command:  # a newline is fine: the command is stored as JSON, never in the crontab
        if "\0" in arg:
            raise UserError("command argument contains a NUL byte")
    import shutil  # install's concern only: kept out of the resident supervisor's memory

    program = command[0]
    if "/" in program:
        found = os.path.normpath(os.path.join(workdir, program))
        if not os.path.isfile(found):
            raise UserError(f"program {program} not found (looked in {workdir})")
        if not os.access(found, os.X_OK):
            raise UserError(f"program {found} is not executable (chmod +x it, or put its interpreter first)")
    else:
        found_or_none = shutil.which(program, path=search_path)
        if found_or_none is None:
            # as in a shell, a program in the working folder is not looked for there: say so
            here = os.path.isfile(os.path.join(workdir, program))
            raise UserError(f"program {program!r} not found on PATH or not executable"
                            + (f" ({program} is in {workdir}: write ./{program})" if here else ""))
        found = os.path.join(workdir, found_or_none)
    return [os.path.normpath(found)] + list(command[1:])




class BrokenJob(UserError):
    """A stored definition that cannot be used as it is."""

    def __init__(self, message: str) -> None:
        super().__init__(message, FAILED)


def definition_problem(data: dict[str, object]) -> Optional[str]:
    """Why a stored definition cannot be used, or None: each field of the type its default has."""
    for key, default in Job.FIELDS:
        value = data.get(key, default)
        if default is REQUIRED:
            if key not in data:
                return f"no {key}"
            ok = (isinstance(value, list) and bool(value) and all(isinstance(a, str) for a in value)
                  if key == "command" else isinstance(value, str))
        elif isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, (int, float)):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        elif isinstance(default, dict):
            ok = isinstance(value, dict) and all(isinstance(v, str) for v in value.values())
        else:
            ok = isinstance(value, type(default))
        if not ok:
            return f"{key} is {type(value).__name__} {value!r}"[:200]
    return None


class JobStore:
    """Job definitions for this host: one JSON file each under <state dir>/jobs."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.folder = files.JsonFolder(paths.jobs_dir(root), check_name)

    def load(self, name: str, strict: bool = True) -> Optional[Job]:
        """NAME's definition, or None. One that is broken (edited by hand, from a newer or buggy
        version: a wrong type, a missing field, a schedule that never fires) is a BrokenJob, or
        None when not `strict` (uninstall must still remove it)."""
        data = self.folder.read(name)
        if not data:
            return None
        problem = definition_problem(data)
        if problem is None:
            job = Job.from_dict(data)
            from ..lock.flock import resolve_lock_dir

            job.lock_dir = resolve_lock_dir(job.lock_dir, self.root)
            return job
        if strict:
            raise BrokenJob(f"the stored definition of {name} is broken ({problem}): "
                            f"install it again, or uninstall it ({self.folder.path(name)})")
        return None

    def exists(self, name: str) -> bool:
        return os.path.lexists(self.folder.path(name))

    def get(self, name: str) -> Job:
        job = self.load(name)
        if job is None:
            raise self.no_such_job(name)
        return job

    def no_such_job(self, name: str, hint: str = "") -> UserError:
        """The error for a NAME not installed (exit 4), naming the installed job it is a typo of."""
        import difflib

        close = difflib.get_close_matches(name, self.names(), n=1)
        hint = f"did you mean {close[0]}?" if close else hint
        return UserError(f"no such job: {name}" + (f" ({hint})" if hint else ""), NO_SUCH_JOB)

    def save(self, job: Job) -> None:
        try:
            self.folder.write(job.name, job.to_dict())
        except OSError as exc:  # a full or read-only disk: one line, not a traceback
            raise UserError(f"cannot save {self.folder.path(job.name)}: {exc.strerror or exc}", FAILED) from None

    def delete(self, name: str) -> None:
        self.folder.delete(name)

    def names(self) -> list[str]:
        return self.folder.names()
