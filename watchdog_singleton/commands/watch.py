"""--watch: show a status again and again, until Ctrl-C or --count views.

On a terminal the view is redrawn in place (rich's Live), so it neither scrolls nor flickers the
way `watch -n2 watchdog-singleton status` does; anywhere else (a pipe, a log, a test) each view is
printed after the last one under a line with the time, so the output reads as a record.
"""

from __future__ import annotations

import sys
import time
from typing import Callable, Optional

from ..errors import OK, UserError
from .common import Echo

Frame = Callable[[Echo], int]  # prints one view through the given echo; returns its exit code

DEFAULT_INTERVAL = 2.0


def watch(frame: Frame, interval: float, count: int, echo: Echo, interactive: Optional[bool] = None,
          sleep: Callable[[float], None] = time.sleep) -> int:
    """Show `frame` every `interval` seconds, `count` times (0: until Ctrl-C, which exits 0).

    The first view's error (no such job, no such farm) is the command's own: one line, its exit
    code. A later one is shown in place of the view, and watching goes on.
    """
    if not 0.1 <= interval <= 86400:
        raise UserError(f"--watch {interval:g}: give 0.1 to 86400 seconds")
    if count < 0:
        raise UserError(f"--count {count}: give 0 (until Ctrl-C) or more views")
    if interactive is None:
        interactive = sys.stdout.isatty()
    if interactive:
        try:
            import rich.live  # noqa: F401  (typer brings it; typer-slim does not)
        except ImportError:
            interactive = False
    first = _view(frame, first=True)  # before anything is drawn
    try:
        if interactive:
            return _live(frame, first, interval, count, sleep)
        return _plain(frame, first, interval, count, echo, sleep)
    except KeyboardInterrupt:
        return OK


def _view(frame: Frame, first: bool = False) -> tuple[int, str]:
    lines: list[str] = []
    try:
        code = frame(lines.append)
    except UserError as exc:
        if first:
            raise
        return exc.exit_code, f"watchdog-singleton: {exc}"
    return code, "\n".join(lines)


def _header(interval: float) -> str:
    return f"{time.strftime('%Y-%m-%d %H:%M:%S')}  every {interval:g}s, Ctrl-C to quit"


def _plain(frame: Frame, view: tuple[int, str], interval: float, count: int, echo: Echo,
           sleep: Callable[[float], None]) -> int:
    shown = 0
    while True:
        code, text = view
        echo(("\n" if shown else "") + f"--- {_header(interval)}\n{text}")
        shown += 1
        if count and shown >= count:
            return code
        sleep(interval)
        view = _view(frame)


def _live(frame: Frame, view: tuple[int, str], interval: float, count: int, sleep: Callable[[float], None]) -> int:
    from rich.console import Console
    from rich.live import Live
    from rich.text import Text

    shown = 0
    with Live(console=Console(), auto_refresh=False, redirect_stdout=False, redirect_stderr=False) as live:
        while True:
            code, text = view
            live.update(Text(f"{_header(interval)}\n\n{text}"), refresh=True)
            shown += 1
            if count and shown >= count:
                return code
            sleep(interval)
            view = _view(frame)
