"""The command line: parse, call one function, print. No logic of its own.

`run` is handled before this module is imported (see __main__): cron must not pay for typer.
"""

from __future__ import annotations

import inspect
import sys
from typing import TYPE_CHECKING, Any, Callable, List, Optional

import typer

from ..errors import INTERRUPTED, USAGE, UserError
from ..job import options
from . import completion

if TYPE_CHECKING:
    from ..commands.common import Context

# Click rewraps help paragraphs; a paragraph that starts with \b keeps its lines as written.
EXAMPLE = "\b\nExample:\n"

app = typer.Typer(add_completion=True, rich_markup_mode=None, pretty_exceptions_enable=False,
                  no_args_is_help=True,
                  help="Keep exactly one copy of a daemon running from cron, without root or systemd.",
                  epilog=(f"{EXAMPLE}  watchdog-singleton install web -- python3 -u server.py --port 8080\n"
                          "  watchdog-singleton status\n\n"
                          "'watchdog-singleton COMMAND --help' tells more; 'python3 -m watchdog_singleton' "
                          "works wherever the package is importable."))


def version() -> str:
    try:
        from importlib.metadata import PackageNotFoundError
        from importlib.metadata import version as dist_version

        return dist_version("watchdog-singleton")
    except (ImportError, PackageNotFoundError):  # run from a source tree
        from .. import __version__

        return __version__


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"watchdog-singleton {version()}")
        raise typer.Exit(0)


@app.callback()
def _top(
    show_version: bool = typer.Option(False, "--version", is_eager=True, callback=_show_version,
                                      help="print the version and exit"),
) -> None:
    """Keep exactly one copy of a daemon running from cron, without root or systemd."""


def _echo(text: str) -> None:
    typer.echo(text)


def _warn(text: str) -> None:
    typer.echo(text, err=True)


def _call(body: Callable[[], int]) -> None:
    try:
        code = body()
    except UserError as exc:
        typer.echo(f"watchdog-singleton: {exc}", err=True)
        raise typer.Exit(exc.exit_code) from None
    raise typer.Exit(code)


def _context() -> "Context":
    from ..commands.common import Context

    return Context.default()


def _example(*lines: str) -> str:
    return EXAMPLE + "\n".join(f"  watchdog-singleton {line}" for line in lines)


NAME = typer.Argument(..., metavar="NAME", help="the job's name: letters, digits, _ . @ + -",
                      autocompletion=completion.known_job)
INSTALLED_NAME = typer.Argument(..., metavar="NAME", help="the job's name: letters, digits, _ . @ + -",
                                autocompletion=completion.installed_job)
def _completion_item(value: str, help: Optional[str] = None) -> Any:
    try:  # typer >= 0.20 carries its own copy of click
        from typer._click.shell_completion import CompletionItem
    except ImportError:
        from click.shell_completion import CompletionItem  # type: ignore[no-redef]
    return CompletionItem(value, help=help)


class _RunCommand(typer.core.TyperCommand):
    """run parses its own arguments (runargs), so it completes them itself: NAME, then options."""

    def shell_complete(self, ctx: Any, incomplete: str) -> List[Any]:
        items = completion.run_words(list(ctx.args), incomplete)
        return [_completion_item(*item) if isinstance(item, tuple) else _completion_item(item) for item in items]


def _typer_option(opt: options.Option, command: str) -> tuple[Any, Any]:
    """(the annotation, the typer.Option) of a schema option: help, range and default from options.py."""
    kind: Any
    default: Any
    if opt.kind == "bool":
        kind, default = bool, False
    elif opt.kind == "env":
        kind, default = List[str], []
    elif opt.unset or opt.default is None or opt.kind == "hook":  # None until given
        kind, default = Optional[float] if opt.kind == "number" else Optional[str], None
    else:
        kind = {"number": float, "int": int}.get(opt.kind, str)
        default = opt.default
    return kind, typer.Option(default, opt.flag, metavar=opt.metavar or None, help=opt.help_text(command),
                              show_default=False)


def _with_options(command: str, body: Callable[..., None], leading: List[inspect.Parameter]) -> Callable[..., None]:
    """`body` with its own parameters (`leading`) and then one keyword per option of options.py
    that `command` takes: what typer reads to build the command's options."""
    params = list(leading)
    for opt in options.for_command(command):
        kind, option = _typer_option(opt, command)
        params.append(inspect.Parameter(opt.name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=kind))
    body.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    body.__annotations__ = {p.name: p.annotation for p in params}
    return body


def _param(name: str, kind: Any, default: Any) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=default, annotation=kind)


COMMAND = typer.Argument(None, metavar="-- COMMAND [ARG...]", help="the program and its arguments, after --")


def install(name: str, command: Optional[List[str]], no_start: bool, **given: Any) -> None:
    """Install NAME: one crontab line that keeps one copy of COMMAND running; start it now."""
    from ..commands.install import install as do_install
    from ..job.request import InstallRequest

    given["env"] = list(given.get("env") or [])
    req = InstallRequest(name=name, command=list(command or []), start=not no_start, **given)
    _call(lambda: do_install(req, _context(), _echo, _warn))


app.command(short_help="Install NAME: keep one copy of COMMAND running.",
            epilog=_example("install web -- python3 -u server.py --port 8080",
                            "install sync --schedule '*/5 * * * *' --restart never -- ./sync.sh"))(
    _with_options(options.INSTALL, install, [
        _param("name", str, INSTALLED_NAME),
        _param("command", Optional[List[str]], COMMAND),
        _param("no_start", bool, typer.Option(False, "--no-start", help="do not start it now; the next tick will")),
    ]))


@app.command(cls=_RunCommand, context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
             add_help_option=False, options_metavar="[OPTIONS]", short_help="What cron calls: run NAME under its lock.",
             epilog=_example("run nightly-sync -- ./sync.sh", "run web --detach -- python3 -u server.py"))
def run(ctx: typer.Context) -> None:
    """Take NAME's lock and run it, or exit 0 if a copy runs: what cron calls (see run --help)."""
    from ..tick.launch import main as launch_main

    raise typer.Exit(launch_main(list(ctx.args)))


def submit(name: str, command: Optional[List[str]], scheduler: str, walltime: str, account: str, queue: str,
           signal_lead: Optional[int], extra: List[str], dry_run: bool, **given: Any) -> None:
    """Submit NAME as a self-renewing batch job that runs COMMAND under `run NAME`: Slurm requeues it
    (singleton dependency, USR1 before the walltime), PBS chains a successor (afterany), HTCondor
    reruns it in place; the daemon gets SIGTERM and --grace before each end. `stop NAME` ends it."""
    from ..commands.submit import SubmitRequest
    from ..commands.submit import submit as do_submit

    req = SubmitRequest(name=name, command=list(command or []), scheduler=scheduler, walltime=walltime,
                        account=account, queue=queue, signal_lead=signal_lead, extra=list(extra), dry_run=dry_run,
                        **given)
    _call(lambda: do_submit(req, _context(), _echo, _warn))


app.command(short_help="Keep NAME alive through Slurm, PBS or HTCondor instead of cron.",
            epilog=_example("submit web --scheduler slurm --walltime 24:00:00 -- python3 -u server.py",
                            "submit web --scheduler pbs --queue long --dry-run -- ./serve.sh"))(
    _with_options(options.SUBMIT, submit, [
        _param("name", str, NAME),
        _param("command", Optional[List[str]], COMMAND),
        _param("scheduler", str, typer.Option(..., metavar="slurm|pbs|htcondor", help="the batch system",
                                              autocompletion=completion.schedulers)),
        _param("walltime", str, typer.Option("24:00:00", metavar="HH:MM:SS",
                                             help="each job's walltime ([DAYS-]HH:MM:SS)")),
        _param("account", str, typer.Option("", metavar="A", help="the account (HTCondor: accounting_group)")),
        _param("queue", str, typer.Option("", "--queue", "--partition", metavar="Q",
                                          help="the queue or partition")),
        _param("signal_lead", Optional[int], typer.Option(
            None, metavar="SECONDS", help="warn the daemon (SIGTERM) this long before the walltime; > --grace "
                                          "(default 300, at most a quarter of the walltime, at least --grace + 20)")),
        _param("extra", List[str], typer.Option([], "--extra", metavar="DIRECTIVE",
                                                help="a raw directive for the script (repeatable), e.g. "
                                                     "--extra '--mem=4G'")),
        _param("dry_run", bool, typer.Option(False, "--dry-run", help="print the script; write and submit nothing")),
    ]))


class _WatchCommand(typer.core.TyperCommand):
    """`--watch SECONDS` and `--watch=SECONDS` are `--watch --interval SECONDS`: the interval is
    optional, which click's options cannot say. (A job named like a number: `status 5 --watch`.)"""

    def parse_args(self, ctx: Any, args: List[str]) -> List[str]:
        out: List[str] = []
        words = list(args)
        while words:
            word = words.pop(0)
            if word == "--":
                out += [word, *words]
                break
            if word.startswith("--watch="):
                out += ["--watch", "--interval", word.partition("=")[2]]
            elif word == "--watch" and words and _is_number(words[0]):
                out += ["--watch", "--interval", words.pop(0)]
            else:
                out.append(word)
        return list(super().parse_args(ctx, out))


def _is_number(word: str) -> bool:
    try:
        float(word)
    except ValueError:
        return False
    return True


WATCH = typer.Option(False, "--watch", help="[SECONDS] show it again every SECONDS (default 2) until Ctrl-C: "
                                            "redrawn in place on a terminal, one after another elsewhere")
INTERVAL = typer.Option(2.0, "--interval", metavar="SECONDS", hidden=True)
COUNT = typer.Option(0, "--count", metavar="N", help="with --watch: stop after N views (for scripts; 0: until Ctrl-C)")


def _watched(render: Callable[[Callable[[str], None]], int], watch: bool, interval: float, count: int) -> int:
    if not watch:
        return render(_echo)
    from ..commands.watch import watch as do_watch

    return do_watch(render, interval, count, _echo)


@app.command(cls=_WatchCommand, short_help="Show every job on this host, or NAME.",
             epilog=_example("status", "status web --json", "status --watch 5"))
def status(
    name: Optional[str] = typer.Argument(None, metavar="[NAME]", help="one job (default: every job)",
                                         autocompletion=completion.known_job),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
    history: bool = typer.Option(False, "--history", help="a periodic job's last runs (with NAME)"),
    watch: bool = WATCH,
    interval: float = INTERVAL,
    count: int = COUNT,
) -> None:
    """Show every job on this host, or NAME: exit 0 running, 3 not running, 4 no such job."""
    from ..commands.status import status as do_status

    _call(lambda: _watched(lambda echo: do_status(_context(), echo, name, as_json, history), watch, interval,
                           count))


@app.command(epilog=_example("logs web -n 50", "logs web --stderr -f"))
def logs(
    name: str = NAME,
    stderr: bool = typer.Option(False, "--stderr", help="the stderr log instead of stdout"),
    lines: int = typer.Option(10, "-n", "--lines", metavar="N", help="how many lines from the end, 0 to 1000000"),
    follow: bool = typer.Option(False, "--follow", "-f", help="keep printing what is appended"),
) -> None:
    """Print the end of NAME's stdout (or stderr) log."""
    from ..commands.logs import logs as do_logs

    _call(lambda: do_logs(name, _context(), stderr, lines, follow))


@app.command(epilog=_example("stop web"))
def stop(name: str = NAME) -> None:
    """Disable NAME's line and stop its whole process tree; a submitted batch chain ends for good."""
    from ..commands.control import stop as do_stop

    _call(lambda: do_stop(name, _context(), _echo))


@app.command(epilog=_example("start web"))
def start(name: str = NAME) -> None:
    """Enable NAME's line and start it now."""
    from ..commands.control import start as do_start

    _call(lambda: do_start(name, _context(), _echo))


@app.command(epilog=_example("restart web"))
def restart(name: str = NAME) -> None:
    """Stop NAME's tree and start it again."""
    from ..commands.control import restart as do_restart

    _call(lambda: do_restart(name, _context(), _echo))


@app.command(epilog=_example("uninstall web", "uninstall web --keep-running", "uninstall web --purge"))
def uninstall(
    name: str = NAME,
    keep_running: bool = typer.Option(False, "--keep-running", help="remove the line, leave it running"),
    purge: bool = typer.Option(False, "--purge", help="also remove its WATCHDOG_SINGLETON_STATE_DIR folder and logs"),
) -> None:
    """Remove NAME's line and definition, and stop everything of it."""
    from ..commands.uninstall import uninstall as do_uninstall

    _call(lambda: do_uninstall(name, _context(), _echo, keep_running, purge))


@app.command(name="import", short_help="Take over your hand-written crontab lines (flock -n, run-one, ...).",
             epilog=_example("import", "import --apply"))
def import_(
    apply: bool = typer.Option(False, "--apply", help="replace those lines by jobs (default: only show)"),
    line: List[int] = typer.Option([], "--line", metavar="N",
                                   help="take over line N only (repeatable); also a plain line"),
    take_all: bool = typer.Option(False, "--all", help="also take over plain lines (no lock of their own)"),
) -> None:
    """Show the job each old crontab line would become and why any line is left alone. Lines that
    guard themselves (flock -n, run-one, keep-one-running) are taken over; plain lines only with
    --line N or --all. --apply replaces exactly those lines, keeps their log files, and adopts a
    copy that still runs instead of starting a second one."""
    from ..commands.importer import import_lines

    _call(lambda: import_lines(_context(), _echo, _warn, apply, line, take_all))


@app.command(short_help="Make this host's jobs match a TOML file.",
             epilog=_example("apply jobs.toml --dry-run", "apply jobs.toml", "export > jobs.toml"))
def apply(
    file: str = typer.Argument(..., metavar="FILE", help="the TOML file: [defaults] and [jobs.NAME] tables"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the plan and change nothing"),
    allow_empty: bool = typer.Option(False, "--allow-empty",
                                     help="apply a file that defines no job (removes every job it created)"),
) -> None:
    """Install, update and remove jobs so that this host runs what FILE lists.

    Prints the plan (create, update, restart, remove, unchanged) first. Only jobs whose command,
    env, workdir, lock or kind changed are restarted; jobs an earlier apply of FILE created and
    FILE no longer lists are uninstalled (each named); jobs installed by hand are never removed. A
    bad file (exit 2) changes nothing, and so does a file with no job unless --allow-empty.
    Keys: KEYS (see docs/periodic-and-config.md).
    """
    from ..commands.apply import apply as do_apply

    _call(lambda: do_apply(file, _context(), _echo, _warn, dry_run, allow_empty=allow_empty))


# The keys as options.py has them (typer reads the docstring when it builds the command).
apply.__doc__ = (apply.__doc__ or "").replace(
    "KEYS", ", ".join(["command", "arguments", "enable"] + [o.key for o in options.OPTIONS.values() if o.key]))


@app.command(short_help="Write the jobs (all, or NAME...) as a TOML file for apply.",
             epilog=_example("export > jobs.toml", "export web sync", "export --into jobs.toml"))
def export(
    names: List[str] = typer.Argument(None, metavar="[NAME...]", help="these jobs only (default: every job)",
                                      autocompletion=completion.export_names),
    into: Optional[str] = typer.Option(None, "--into", metavar="FILE",
                                       help="update FILE in place: keep its comments, order, [defaults] and "
                                            "paths; add missing jobs, drop tables of jobs no longer installed"),
) -> None:
    """Print the jobs of this host (all, or NAME...) as a TOML file; apply of it changes nothing.

    Keys equal to the defaults are left out, and so are PATH, LANG and the other variables
    install takes from the shell when this shell has the same value. With --into FILE, a job
    whose table already gives it back is left as written, a changed job has only its changed
    keys rewritten, a new job is appended; exporting every job also removes the tables of jobs
    no longer installed here (with NAME..., only those jobs are touched)."""
    from ..commands.export import export as do_export

    _call(lambda: do_export(list(names or []), _context(), _echo, into, _warn))


lease_app = typer.Typer(rich_markup_mode=None, no_args_is_help=True,
                        help="One copy across hosts: NAME's cluster lease and its fencing token.")
app.add_typer(lease_app, name="lease")
CLUSTER = typer.Option(None, "--cluster", metavar="URL",
                       help="postgresql://USER@HOST/DB (default $WATCHDOG_SINGLETON_CLUSTER); password in ~/.pgpass")


@lease_app.command("check", epilog=_example("lease check ingest --token 42 && write-the-batch"))
def lease_check(
    name: str = INSTALLED_NAME,
    token: int = typer.Option(..., "--token", metavar="N", help="the fencing token the daemon was given"),
    cluster: Optional[str] = CLUSTER,
) -> None:
    """Exit 0 while N is NAME's current lease, 1 once it is stale, 3 if the database cannot be reached."""
    from ..commands.lease import check

    _call(lambda: check(name, token, cluster, _warn))


@lease_app.command("status", epilog=_example("lease status ingest --json"))
def lease_status(
    name: str = INSTALLED_NAME,
    cluster: Optional[str] = CLUSTER,
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
) -> None:
    """NAME's lease as the database sees it: holder, token, expiry, last sync start."""
    from ..commands.lease import status as lease_status_of

    _call(lambda: lease_status_of(name, cluster, _echo, _warn, as_json))


class _FarmGroup(typer.core.TyperGroup):
    """`farm TASKLIST ...` is `farm run TASKLIST ...`: a first word that names no subcommand is a list."""

    def parse_args(self, ctx: Any, args: List[str]) -> List[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["run", *args]
        return list(super().parse_args(ctx, args))

    def shell_complete(self, ctx: Any, incomplete: str) -> List[Any]:
        words = [_completion_item(word) for word in completion.farm_words(incomplete)]
        return list(super().shell_complete(ctx, incomplete)) + words


farm_app = typer.Typer(cls=_FarmGroup, no_args_is_help=True, rich_markup_mode=None,
                       help="Run a task list, each task exactly once, over N workers (see 'farm run --help').",
                       epilog=_example("farm tasks.txt --workers 8", "farm status tasks.txt",
                                       "farm trace tasks.txt"))
app.add_typer(farm_app, name="farm")
WORKDIR_OR_LIST = typer.Argument(None, metavar="[WORKDIR|TASKLIST]",
                                 help="the work folder, or the task list whose LIST.farm folder is meant (default .)",
                                 autocompletion=completion.farm_targets)
DB = typer.Option(None, "--db", metavar="URL", help="the store: postgresql://... or a SQLite file "
                                                    "(default WORKDIR/farm.sqlite)")


@farm_app.command("run", epilog=_example("farm tasks.txt --workers 8 --task-timeout 3600 --retries 2",
                                         "farm tasks.txt --timeout 85000   # a 24 h batch job: requeue on exit 75"))
def farm_run(
    tasklist: str = typer.Argument(..., metavar="TASKLIST", help="one command per line; # comments",
                                   autocompletion=completion.tasklists),
    workers: int = typer.Option(4, "--workers", "-n", metavar="N", help="tasks at once, 1 to 4096"),
    workdir: Optional[str] = typer.Option(None, metavar="DIR",
                                          help="database, logs/<id>.log, timeline (default TASKLIST.farm)"),
    timeout: float = typer.Option(0.0, metavar="S",
                                  help="stop cleanly after S seconds and exit 75, 0 (never) to 315360000"),
    task_timeout: float = typer.Option(0.0, metavar="S",
                                  help="stop a task's tree after S seconds, 0 (never) to 315360000"),
    retries: int = typer.Option(0, metavar="K", help="rerun a failed task up to K times, 0 to 1000"),
    db: Optional[str] = DB,
    runner: Optional[str] = typer.Option(None, metavar="NAME",
                                         help="a runner from runners.ini (setup, prefix, tmpdir)"),
    lease: float = typer.Option(60.0, metavar="S",
                                  help="a task's lease, renewed every S/3 while the farm lives, 0.1 to 86400"),
    grace: float = typer.Option(10.0, metavar="S", help="SIGTERM to SIGKILL wait when stopping a task, 0 to 3600"),
    progress_every: float = typer.Option(10.0, metavar="S",
                                  help="seconds between progress lines off a terminal, 0.1 to 86400"),
    from_pytaskfarmer: Optional[str] = typer.Option(
        None, metavar="DIR", help="take over PyTaskFarmer's work folder DIR (TASKLIST_workdir): its finished "
                                  "and failed tasks are recorded, not run again"),
) -> None:
    """Run TASKLIST's tasks, each exactly once: exit 0 all finished, 1 some failed, 75 stopped with
    tasks left (SIGUSR1, SIGTERM, SIGINT or --timeout): run it again to continue; 74 its database
    or files failed (locked by someone, disk full, read-only, gone): fix that, then run it again."""
    from ..commands.farm import FarmRequest
    from ..commands.farm import run as do_run

    req = FarmRequest(tasklist=tasklist, workdir=workdir, workers=workers, timeout=timeout,
                      task_timeout=task_timeout, retries=retries, db=db, runner=runner, lease=lease, grace=grace,
                      progress_every=progress_every, from_pytaskfarmer=from_pytaskfarmer)
    _call(lambda: do_run(req, _echo, _warn))


@farm_app.command("status", cls=_WatchCommand,
                  epilog=_example("farm status tasks.txt", "farm status tasks.txt.farm --json",
                                  "farm status tasks.txt --watch"))
def farm_status(
    target: Optional[str] = WORKDIR_OR_LIST,
    db: Optional[str] = DB,
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
    watch: bool = WATCH,
    interval: float = INTERVAL,
    count: int = COUNT,
) -> None:
    """Counts per state, and every task not simply finished once."""
    from ..commands.farm import status as do_status

    _call(lambda: _watched(lambda echo: do_status(target, db, as_json, echo), watch, interval, count))


@farm_app.command("retry", epilog=_example("farm retry tasks.txt", "farm retry tasks.txt --id 3f2a9c01b7de-0"))
def farm_retry(
    target: Optional[str] = WORKDIR_OR_LIST,
    db: Optional[str] = DB,
    ids: List[str] = typer.Option([], "--id", metavar="ID", help="only this task (repeatable)"),
) -> None:
    """Put failed tasks back to todo (their failure count starts again)."""
    from ..commands.farm import retry as do_retry

    _call(lambda: do_retry(target, db, list(ids), _echo))


@farm_app.command("trace", epilog=_example("farm trace tasks.txt -o trace.json"))
def farm_trace(
    target: Optional[str] = WORKDIR_OR_LIST,
    output: Optional[str] = typer.Option(None, "--output", "-o", metavar="FILE",
                                         help="where to write it (default WORKDIR/trace.json)"),
) -> None:
    """Write the timeline as Chrome trace-event JSON, for Perfetto or chrome://tracing."""
    from ..commands.farm import trace as do_trace

    _call(lambda: do_trace(target, output, _echo))


def _plain_arguments(group: Any) -> None:
    """Show arguments as their metavar (NAME, -- COMMAND [ARG...]), the way options show theirs.

    typer >= 0.20 prints `{NAME}` in the usage line and `NAME <str>`, `<list[str]>` in the list.
    """
    for command in getattr(group, "commands", {}).values():
        _plain_arguments(command)  # a sub-app's commands (lease check) too
        for param in command.params:
            if param.param_type_name == "argument" and param.metavar:
                param.display_type = lambda ctx: ""
                param._usage_display_name = lambda metavar=param.metavar: metavar


def main(argv: Optional[List[str]] = None) -> None:
    """Run the app; a usage error is one line on stderr and exit 2, like every other bad input."""
    try:  # typer >= 0.20 carries its own copy of click
        from typer._click.exceptions import UsageError
    except ImportError:
        from click.exceptions import UsageError  # type: ignore[no-redef]

    args = argv if argv is not None else sys.argv[1:]
    command = typer.main.get_command(app)
    _plain_arguments(command)
    try:
        code = command.main(args=args or ["--help"], prog_name="watchdog-singleton",
                            standalone_mode=False)
    except UsageError as exc:
        hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx else ""
        typer.echo(f"watchdog-singleton: {exc.format_message()}{hint}", err=True)
        sys.exit(USAGE)
    except typer.Abort:
        sys.exit(INTERRUPTED)
    sys.exit(code or 0)
