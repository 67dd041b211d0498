"""The command line: parse, call one function, print. No logic of its own.

`run` is handled before this module is imported (see __main__): cron must not pay for typer.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Callable, List, Optional

import typer

from .errors import UserError

if TYPE_CHECKING:
    from .commands.common import Context

app = typer.Typer(add_completion=False, rich_markup_mode=None, pretty_exceptions_enable=False,
                  no_args_is_help=True,
                  help="Keep exactly one copy of a daemon running from cron, without root or systemd.")


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
    from .commands.common import Context

    return Context.default()


@app.command()
def install(
    name: str = typer.Argument(..., help="job name: letters, digits, _ . @ + -"),
    command: List[str] = typer.Argument(None, help="after --: the program and its arguments"),
    schedule: str = typer.Option("* * * * *", help="cron expression or @-word for the launcher"),
    no_start: bool = typer.Option(False, "--no-start", help="do not start it now; cron will"),
    log_dir: Optional[str] = typer.Option(None, help="folder for NAME.stdout.log and NAME.stderr.log"),
    workdir: Optional[str] = typer.Option(None, help="working directory (default: here)"),
    env: List[str] = typer.Option([], "--env", help="KEY=VALUE for the daemon (repeatable)"),
    grace: float = typer.Option(10.0, help="seconds from SIGTERM to SIGKILL when stopping"),
    restart: str = typer.Option("always", help="always | on-failure | never (then cron restarts it)"),
    backoff_initial: float = typer.Option(1.0, help="first delay after a quick failure, seconds"),
    backoff_max: float = typer.Option(60.0, help="longest delay between restarts, seconds"),
    min_uptime: float = typer.Option(10.0, help="a run this long resets the backoff, seconds"),
    log_max_bytes: int = typer.Option(10 * 1024 * 1024, help="rotate a log file at this size (0: never)"),
    log_backups: int = typer.Option(3, help="rotated files kept per log"),
    lock_dir: Optional[str] = typer.Option(None, help="where the lock lives (default /tmp/watchdog-singleton-UID)"),
    allow_network_fs: bool = typer.Option(False, "--allow-network-fs", help="accept a lock folder on NFS/Lustre/GPFS"),
    lean: bool = typer.Option(False, "--lean", help="no resident supervisor: the daemon holds the lock itself"),
) -> None:
    """Install NAME: a crontab entry that keeps one copy of COMMAND running; start it now."""
    from .commands.install import InstallRequest
    from .commands.install import install as do_install

    req = InstallRequest(name=name, command=list(command or []), schedule=schedule, start=not no_start,
                         log_dir=log_dir, workdir=workdir, env=list(env), grace=grace, lock_dir=lock_dir,
                         allow_network_fs=allow_network_fs, restart=restart, backoff_initial=backoff_initial,
                         backoff_max=backoff_max, min_uptime=min_uptime, log_max_bytes=log_max_bytes,
                         log_backups=log_backups, lean=lean)
    _call(lambda: do_install(req, _context(), _echo, _warn))


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
             add_help_option=False)
def run(ctx: typer.Context) -> None:
    """The launcher cron calls: take NAME's lock and supervise it (see run --help)."""
    from .launch import main as launch_main

    raise typer.Exit(launch_main(list(ctx.args)))


@app.command()
def status(
    name: Optional[str] = typer.Argument(None),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
) -> None:
    """Show every job on this host, or NAME (exit 0 running, 3 not running, 4 no such job)."""
    from .commands.status import status as do_status

    _call(lambda: do_status(_context(), _echo, name, as_json))


@app.command()
def logs(
    name: str,
    stderr: bool = typer.Option(False, "--stderr", help="the stderr log instead of stdout"),
    lines: int = typer.Option(10, "-n", "--lines", help="how many lines from the end"),
    follow: bool = typer.Option(False, "--follow", "-f", help="keep printing what is appended"),
) -> None:
    """Print the end of NAME's stdout (or stderr) log."""
    from .commands.logs import logs as do_logs

    _call(lambda: do_logs(name, _context(), stderr, lines, follow))


@app.command()
def stop(name: str) -> None:
    """Disable NAME's entry and stop its whole process tree."""
    from .commands.control import stop as do_stop

    _call(lambda: do_stop(name, _context(), _echo))


@app.command()
def start(name: str) -> None:
    """Enable NAME's entry and start it now."""
    from .commands.control import start as do_start

    _call(lambda: do_start(name, _context(), _echo))


@app.command()
def restart(name: str) -> None:
    """Stop NAME's tree and start it again."""
    from .commands.control import restart as do_restart

    _call(lambda: do_restart(name, _context(), _echo))


@app.command()
def uninstall(
    name: str,
    keep_running: bool = typer.Option(False, "--keep-running", help="remove the entry, leave it running"),
) -> None:
    """Remove NAME's entry and definition, and stop everything of it."""
    from .commands.uninstall import uninstall as do_uninstall

    _call(lambda: do_uninstall(name, _context(), _echo, keep_running))


def main(argv: Optional[List[str]] = None) -> None:
    """Run the app; a usage error is one line on stderr and exit 2, like every other bad input."""
    try:  # typer >= 0.20 carries its own copy of click
        from typer._click.exceptions import UsageError
    except ImportError:
        from click.exceptions import UsageError  # type: ignore[no-redef]

    args = argv if argv is not None else sys.argv[1:]
    command = typer.main.get_command(app)
    try:
        code = command.main(args=args or ["--help"], prog_name="watchdog-singleton",
                            standalone_mode=False)
    except UsageError as exc:
        hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx else ""
        typer.echo(f"watchdog-singleton: {exc.format_message()}{hint}", err=True)
        sys.exit(2)
    except typer.Abort:
        sys.exit(130)
    sys.exit(code or 0)
