"""What a user watches while the farm runs: a live bar on a terminal, plain lines otherwise."""

from __future__ import annotations

import sys
import time
from typing import Any, Callable, Optional

PLAIN_EVERY = 10.0  # seconds between plain lines (a batch job's log)


def summary(counts: dict[str, int], rate: float) -> str:
    left = counts.get("todo", 0)
    eta = f", ETA {left / rate:.0f} s" if rate > 0 and left else ""
    return (f"done {counts.get('finished', 0)}, failed {counts.get('failed', 0)}, running {counts.get('running', 0)}, "
            f"left {left}, {rate:.1f} tasks/s{eta}")


class Progress:
    """`update(counts)` as often as you like; it draws at most a few times a second."""

    def __init__(self, write: Callable[[str], None], tty: Optional[bool] = None, every: float = PLAIN_EVERY,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.write = write
        self.tty = sys.stderr.isatty() if tty is None else tty
        self.every = every
        self.clock = clock
        self.began = clock()
        self.first_done: Optional[int] = None
        self.last = 0.0
        self.bar: Any = None
        self.task_id: Any = None

    def _rate(self, done: int) -> float:
        if self.first_done is None:
            self.first_done = done
        elapsed = self.clock() - self.began
        return (done - self.first_done) / elapsed if elapsed > 0 else 0.0

    def update(self, counts: dict[str, int], force: bool = False) -> None:
        now = self.clock()
        done = counts.get("finished", 0) + counts.get("failed", 0)
        rate = self._rate(done)
        if self.tty:
            if not force and now - self.last < 0.2:
                return
            self.last = now
            self._draw(counts, done, rate)
        elif force or now - self.last >= self.every:
            self.last = now
            self.write(f"farm: {summary(counts, rate)}")

    def _draw(self, counts: dict[str, int], done: int, rate: float) -> None:
        total = sum(counts.values())
        if self.bar is None:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("farm"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("{task.description}"), TimeRemainingColumn(), transient=False)
            self.bar.start()
            self.task_id = self.bar.add_task("", total=total)
        self.bar.update(self.task_id, completed=done, total=total,
                        description=(f"failed {counts.get('failed', 0)} running {counts.get('running', 0)} "
                                     f"left {counts.get('todo', 0)} {rate:.1f}/s"))

    def close(self, counts: dict[str, int]) -> None:
        if self.bar is not None:
            done = counts.get("finished", 0) + counts.get("failed", 0)
            self._draw(counts, done, self._rate(done))
            self.bar.stop()
        else:
            self.update(counts, force=True)
