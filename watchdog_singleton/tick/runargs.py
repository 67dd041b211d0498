"""The arguments of `run`, parsed in a few lines of our own.

argparse would stay in the resident supervisor's memory for the daemon's whole life, and its
errors take seven lines; ours take one. Options go anywhere before `--`, as `--opt value` or
`--opt=value`. After `--`, everything is the command; without `--`, the first word after NAME
that is not an option starts it.
"""

from __future__ import annotations

from ..errors import UserError
from ..job import options
from ..job.model import check_limit, check_restart
from ..job.options import OPTIONS

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing stays out of the resident supervisor's memory; annotations are strings
    from typing import Optional

USAGE = "watchdog-singleton run NAME [OPTIONS] [-- COMMAND [ARG...]]"
SEE_HELP = " (see 'watchdog-singleton run --help')"

HELP = f"""usage: {USAGE}

Run NAME under its singleton lock: what cron calls. If a copy of NAME runs, exit 0 at once and
print nothing. With -- COMMAND, run that command under NAME's lock without any install, and
exit with its exit code. Options may come before or after NAME.

options:
  --detach              return once the daemon runs (from cron: always)
  --settle SECONDS      how long --detach waits to see the daemon still running (default 1, 0 to 60)
  --restart POLICY      ad-hoc runs: always | on-failure | never (default never)
  --forking             ad-hoc runs: the command puts itself in the background; follow its tree
  --lock-dir DIR        ad-hoc runs: where the lock lives
  --log-dir DIR         ad-hoc runs: write output to NAME's log files here
  --workdir DIR         ad-hoc runs: working directory (default: here)
  --env KEY=VALUE       ad-hoc runs: extra environment (repeatable)
  --grace SECONDS       SIGTERM to SIGKILL wait when stopping (default 10, 0 to 3600)
  --allow-network-fs    accept a lock folder on NFS, Lustre, GPFS, ...
  --cluster URL         ad-hoc runs: one copy across hosts, on a lease in this PostgreSQL
                        (postgresql://USER@HOST/DB, password in ~/.pgpass; default
                        $WATCHDOG_SINGLETON_CLUSTER; 'none': this host only)
  --lease SECONDS       ad-hoc runs: the cluster lease's duration (default 60, 5 to 86400)
  --standby             ad-hoc runs: while another host holds the lease, wait for it
  --rotate              ad-hoc runs: the hosts take turns, one run each, in name order
  -h, --help            show this text

examples:
  watchdog-singleton run nightly-sync -- ./sync.sh
  watchdog-singleton run web --detach --log-dir ~/logs -- python3 -u server.py
"""

# run's own options, then those of the job it shares with install (options.py: commands has "run")
FLAGS = {"--detach": "detach", "--cron": "cron", "--help": "help", "-h": "help",
         **{opt.flag: opt.name for opt in options.for_command(options.RUN) if opt.kind == "bool"}}
VALUES = {"--state-dir": "state_dir",
          **{opt.flag: opt.name for opt in options.for_command(options.RUN) if opt.kind != "bool"}}
NUMBERS = tuple(opt.flag for opt in options.for_command(options.RUN) if opt.kind == "number")


class RunArgs:
    """What `run` was asked to do; the attributes launch.py reads."""

    def __init__(self) -> None:
        self.name = ""
        self.command: list[str] = []
        self.detach = False
        self.cron = False  # hidden: our crontab lines pass it
        self.state_dir: Optional[str] = None  # hidden: install and start pass it
        self.lock_dir: Optional[str] = None
        self.log_dir: Optional[str] = None
        self.workdir: Optional[str] = None
        self.env: list[str] = []
        self.grace: float = OPTIONS["grace"].default
        self.restart = "never"  # run's own: an ad-hoc command runs once (install's is "always")
        self.settle: Optional[float] = None  # None: the job's own (1 s for ad-hoc runs)
        self.forking = False
        self.allow_network_fs = False
        self.cluster: Optional[str] = None  # None: $WATCHDOG_SINGLETON_CLUSTER
        self.lease: Optional[float] = None  # None: the default (60 s); given without a cluster, refused
        self.standby = False
        self.rotate = False
        self.help = False

    def __repr__(self) -> str:
        return f"RunArgs({vars(self)!r})"


def parse(argv: list[str]) -> RunArgs:
    """Parse `run`'s arguments; a UserError (exit 2, one line) for anything we do not understand.

    With --help anywhere before `--`, the other checks are skipped: the caller prints HELP.
    """
    args = RunArgs()
    name: Optional[str] = None
    problem: Optional[UserError] = None  # the first one; it names its option (UserError.field)
    words = list(argv)
    while words:
        word = words.pop(0)
        if word == "--":
            args.command = words
            break
        if not word.startswith("-") or word == "-":
            if name is None:
                name = word
                continue
            args.command = [word] + words  # the command starts here; its own options are its own
            break
        option, has_value, value = word.partition("=")
        if option in FLAGS:
            if has_value:
                problem = problem or UserError(f"run: option {option} takes no value (got {word!r}){SEE_HELP}")
            setattr(args, FLAGS[option], True)
        elif option in VALUES:
            if not has_value:
                if not words:
                    problem = problem or UserError(f"run: option {option} needs a value{SEE_HELP}")
                    continue
                value = words.pop(0)
            problem = problem or _store(args, option, value)
        else:
            problem = problem or UserError(f"run: no such option: {option}{SEE_HELP}")
    args.name = name or ""
    if args.help:
        return args
    if problem is None and name is None:
        problem = UserError(f"run: missing NAME{SEE_HELP}")
    if problem is not None:
        raise problem
    return args


def _store(args: RunArgs, option: str, value: str) -> Optional[UserError]:
    """Put `value` into its attribute; the problem with it, if any (the one check of its option)."""
    try:
        if option in NUMBERS:
            try:
                number = float(value)
            except ValueError:
                opt = options.BY_FLAG[option]
                return UserError(f"{option} {value!r} is not a number", field=opt.name)
            setattr(args, VALUES[option], check_limit(option, number))
        elif option == "--restart":
            args.restart = check_restart(value)
        elif option == "--env":
            args.env.append(value)
        else:
            setattr(args, VALUES[option], value)
    except UserError as exc:
        return exc
    return None
