"""A job's options, written once: name, type, default, range, help, TOML key, whether a change
restarts the daemon, and which commands take it.

Everything else is made from this table: install's typer options (and submit's shared ones),
the TOML keys `apply` reads and their types, `export`'s defaults, the ranges (`jobs.LIMITS`) and
the docs' option tables (checked by tests/contract/test_options.py, with `install --help`).

    opt = OPTIONS["grace"]
    opt.flag, opt.key, opt.default, opt.range_text()   # "--grace", "grace", 10.0, "0 to 3600"

Plain data from the standard library only: the cron tick and the resident supervisor load it
(through jobs.py), so it must cost nothing.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing stays out of the resident supervisor's memory; annotations are strings
    from typing import Any, Optional

INSTALL, RUN, SUBMIT = "install", "run", "submit"

# kind: what a value is, as the TOML file and the CLI take it
#   bool, number (seconds), int, str, path, env (KEY=VALUE items / a table), hook (a command line or argv)
KIND_TEXT = {"argv": "a list of strings or a string", "list": "a list of strings", "bool": "true or false",
             "str": "a string", "path": "a string (a path)", "number": "a number", "int": "an integer",
             "env": "a table of strings", "hook": "a list of strings or a string"}


class Option:
    """One option of a job. `default` is the value a job gets when the option is not given;
    `shown` is how help and the docs say it ("" for none); `unset` options are None on the
    command line until given (the command then tells "given" from "default")."""

    __slots__ = ("name", "flag", "kind", "default", "shown", "help", "metavar", "key", "low", "high", "also",
                 "low_from", "restarts", "commands", "unset", "help_for", "also_means", "default_note")

    def __init__(self, name: str, kind: str, default: "Any", help: str, *, shown: "Optional[str]" = None,
                 metavar: str = "", key: "Optional[str]" = None, low: "Optional[float]" = None,
                 high: "Optional[float]" = None, also: "Optional[float]" = None, low_from: str = "",
                 restarts: bool = False, commands: "tuple[str, ...]" = (INSTALL,), unset: bool = False,
                 help_for: "Optional[dict[str, str]]" = None, also_means: str = "never",
                 default_note: str = "") -> None:
        self.name = name  # the field of InstallRequest and Job
        self.flag = "--" + name.replace("_", "-")
        self.kind = kind
        self.default = default
        self.shown = _shown(default) if shown is None else shown
        self.help = help
        self.metavar = metavar
        self.key = name if key is None else key  # in the TOML file ("": none)
        self.low = low
        self.high = high
        self.also = also  # a value allowed outside [low, high]: 0 for "never" or "not given"
        self.also_means = also_means  # what `also` means, for the range text ("": not shown there)
        self.low_from = low_from  # another option whose value is the real lower bound
        self.restarts = restarts  # a running copy must restart for a change to take effect
        self.commands = commands
        self.unset = unset
        self.help_for = help_for or {}  # another command's wording of the help
        self.default_note = default_note  # help's words for a default that is no value ("" : from `shown`)

    def __repr__(self) -> str:
        return f"Option({self.name!r})"

    def range_text(self) -> str:
        """"0 to 3600", "0 (never) or 4096 to 2^40", "--backoff-initial to 86400"; "" without a range."""
        if self.high is None:
            return ""
        low = self.low_from if self.low_from else number_text(self.low or 0)
        text = f"{low} to {number_text(self.high)}"
        if self.also is not None and self.also_means:
            text = f"{number_text(self.also)} ({self.also_means}) or {text}"
        return text

    def help_text(self, command: str = INSTALL) -> str:
        """The help line: its words, the range, the default ("(default 10)")."""
        text = self.help_for.get(command, self.help)
        range_text = self.range_text()
        if range_text:
            text = f"{text}, {range_text}"
        if self.default_note:
            return f"{text} {self.default_note}"
        return f"{text} (default {self.shown})" if self.shown else text


def number_text(value: float) -> str:
    """A number as help and the docs write it: 3600, 0.1, 2^40."""
    if value >= 2**20 and value == int(value) and int(value) & (int(value) - 1) == 0:
        return f"2^{int(value).bit_length() - 1}"
    return str(int(value)) if value == int(value) else str(value)


def _shown(default: "Any") -> str:
    if isinstance(default, bool) or default is None or default == "" or default == [] or default == {}:
        return ""
    if isinstance(default, (int, float)):
        return number_text(default)
    return str(default)


YEAR = 366 * 86400.0
HOOK_HELP = ("run CMD (split as a shell splits words, run without one) when NAME enters backoff, a periodic "
             "run fails or times out, or it loses its lease or batch chain")

# In the order install --help lists them.
_ALL = (
    Option("schedule", "str", "* * * * *", "when cron runs the launcher: 5 fields or an @-word", metavar="EXPR"),
    Option("log_dir", "path", None, "folder for NAME.stdout.log and NAME.stderr.log", metavar="DIR",
           shown="$XDG_STATE_HOME/watchdog-singleton/HOST/logs", commands=(INSTALL, RUN)),
    Option("workdir", "path", None, "the daemon's working directory", metavar="DIR", shown="where install ran",
           restarts=True, commands=(INSTALL, RUN)),
    Option("env", "env", {}, "extra environment (repeatable)", metavar="KEY=VALUE", restarts=True,
           commands=(INSTALL, RUN)),
    Option("grace", "number", 10.0, "SIGTERM to SIGKILL wait when stopping", metavar="SECONDS", low=0.0,
           high=3600.0, commands=(INSTALL, RUN, SUBMIT),
           help_for={SUBMIT: "SIGTERM to SIGKILL wait for the daemon"}),
    Option("restart", "str", "always", "always | on-failure | never (then the next tick restarts it)",
           metavar="POLICY", commands=(INSTALL, RUN)),
    Option("backoff_initial", "number", 1.0, "first delay after quick failures", metavar="SECONDS", low=0.1,
           high=3600.0),
    Option("backoff_max", "number", 60.0, "longest delay between restarts", metavar="SECONDS", low=0.1,
           high=86400.0, low_from="--backoff-initial"),
    Option("min_uptime", "number", 1.0, "a run shorter than this is a quick failure", metavar="SECONDS",
           low=0.1, high=86400.0),  # a floor on the restart rate whatever the other options
    Option("log_max_bytes", "int", 10 * 1024 * 1024, "rotate a log file at this size", metavar="N",
           shown="10 MiB", low=4096, high=2**40, also=0),
    Option("log_backups", "int", 3, "rotated files kept per log", metavar="N", low=0, high=100),
    # (each backup costs a rename at every rotation)
    Option("lock_dir", "path", None, "where the lock lives", metavar="DIR", shown="a private folder under /tmp",
           restarts=True, commands=(INSTALL, RUN)),
    Option("allow_network_fs", "bool", False, "accept a lock folder on NFS/Lustre/GPFS", commands=(INSTALL, RUN)),
    Option("lean", "bool", False, "no resident supervisor: the daemon holds the lock itself", restarts=True),
    Option("shared", "bool", False, "one resident supervisor for all of your shared jobs on this host, "
           "instead of one per job", restarts=True),
    Option("forking", "bool", False, "the command puts itself in the background (like systemd Type=forking): "
           "follow the tree it leaves", restarts=True, commands=(INSTALL, RUN)),
    Option("settle", "number", 1.0, "how long install/start wait to see the daemon still running",
           metavar="SECONDS", low=0.0, high=60.0, commands=(INSTALL, RUN)),
    Option("periodic", "bool", False, "run COMMAND to completion at each due time of --schedule, never two at "
           "once", restarts=True),
    # 0 stands for "not given" in these two: help and the docs say what happens instead.
    Option("every", "number", 0.0, "periodic, start to start (the supervisor keeps it; under a minute too)",
           metavar="SECONDS", key="period", shown="", default_note="(default: none, the due times of --schedule)",
           low=1.0, high=YEAR, also=0, also_means=""),
    Option("timeout", "number", 0.0, "periodic: stop a run's tree after this long", metavar="SECONDS",
           shown="min(3 periods, period + 1 h)", low=1.0, high=YEAR, also=0, also_means=""),
    Option("jitter", "number", 0.0, "periodic: start each run up to this much late", metavar="SECONDS", low=0.0,
           high=86400.0),
    Option("catch_up", "str", "none", "periodic: once = one make-up run at start for a missed due time",
           metavar="none|once"),
    Option("loop", "bool", False, "periodic: rerun at once while it exits 0, period after period"),
    Option("max_lifetime", "number", 0.0, "daemons: restart gracefully after this long", metavar="SECONDS",
           low=10.0, high=YEAR, also=0),
    Option("stdout_log", "path", None, "write stdout to this file instead", metavar="FILE",
           shown="LOG_DIR/NAME.stdout.log"),
    Option("stderr_log", "path", None, "write stderr to this file instead (may be the --stdout-log file)",
           metavar="FILE",
           shown="LOG_DIR/NAME.stderr.log"),
    Option("cluster", "str", "", "one copy across hosts, on a lease in this PostgreSQL: postgresql://USER@HOST/DB, "
           "password in ~/.pgpass ('none': this host only)", metavar="URL", shown="$WATCHDOG_SINGLETON_CLUSTER",
           restarts=True, unset=True, commands=(INSTALL, RUN, SUBMIT),
           help_for={SUBMIT: "one copy across hosts and batch jobs, on a lease in this PostgreSQL "
                             "('none': no lease)"}),
    Option("lease", "number", 60.0, "cluster: the lease's duration (renewed every sixth of it)", metavar="SECONDS",
           low=5.0, high=86400.0, restarts=True, unset=True, commands=(INSTALL, RUN, SUBMIT),
           help_for={SUBMIT: "cluster: the lease's duration"}),
    Option("standby", "bool", False, "cluster: while another host holds the lease, wait resident for it",
           restarts=True, commands=(INSTALL, RUN, SUBMIT)),
    Option("rotate", "bool", False, "cluster: the hosts take turns, one run each, in name order", restarts=True,
           commands=(INSTALL, RUN, SUBMIT)),
    Option("sync", "bool", False, "cluster, periodic: at most one run per period across all hosts", restarts=True),
    Option("on_failure", "hook", [], HOOK_HELP, metavar="CMD", commands=(INSTALL, SUBMIT)),
    Option("mail", "str", "", "on those failures, mail ADDR (cron's MAILTO) through the host's sendmail",
           metavar="ADDR", commands=(INSTALL, SUBMIT)),
    Option("notify_every", "number", 3600.0, "at most one notice per kind of failure this often",
           metavar="SECONDS", low=1.0, high=YEAR, commands=(INSTALL, SUBMIT)),
)

OPTIONS: "dict[str, Option]" = {opt.name: opt for opt in _ALL}
BY_FLAG: "dict[str, Option]" = {opt.flag: opt for opt in _ALL}

# TOML keys that are no install option: kind, and the field an error about them names
FILE_ONLY = {"command": "argv", "arguments": "list", "enable": "bool"}

# What a running copy was started with beyond the options: its command.
RESTART_FIELDS = ("command",) + tuple(opt.name for opt in _ALL if opt.restarts)

# The range of every number, in one place: install, run, submit and logs check against it.
# (low, high); --backoff-max's low is --backoff-initial.
LIMITS: "dict[str, tuple[float, float]]" = {
    **{opt.flag: (opt.low if opt.low is not None else 0.0, opt.high) for opt in _ALL if opt.high is not None},
    "--lines": (0, 1_000_000),  # logs -n
}


class about:
    """`with about("grace"): ...`: a UserError raised inside that names no field yet is about
    that option (errors.UserError.field). A class, not contextlib: this module stays tiny."""

    def __init__(self, field: str) -> None:
        self.field = field

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: "Any", exc: "Any", trace: "Any") -> None:
        if exc is not None and getattr(exc, "field", None) == "":
            exc.field = self.field


def for_command(command: str) -> "list[Option]":
    return [opt for opt in _ALL if command in opt.commands]


def key_of(name: str) -> str:
    """The TOML key of field `name` (an option, or command/arguments/enable); "" for none (the job)."""
    opt = OPTIONS.get(name)
    if opt is not None:
        return opt.key
    return name if name in FILE_ONLY else ""


def file_keys() -> "dict[str, tuple[str, str]]":
    """TOML key -> (the InstallRequest field it sets, or "" when apply handles it; its kind)."""
    keys = {"command": ("command", "argv"), "arguments": ("", "list"), "enable": ("", "bool")}
    keys.update({opt.key: (opt.name, opt.kind) for opt in _ALL if opt.key})
    return keys
