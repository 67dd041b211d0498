"""The supervisor's output besides the daemon's tree: its log, the daemon's stdout and stderr
sinks, with the supervisor's own notes in the stderr log (kept until the sinks exist, written once
they do). Passthrough runs (`run -- COMMAND` on a terminal) have no sinks and write no notes. What
wakes the supervisor (signals, a self-pipe) is the child-process loop's (`proc.children.Wakeups`)."""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing stays out of the resident supervisor's memory; annotations are strings
    from typing import Callable, Optional

    from ..job.model import Job
    from .logsink import LogSink
    from .pump import Pump

    OpenSink = Callable[[str, int, int], LogSink]


class Output:
    def __init__(self, passthrough: bool, open_sink: OpenSink) -> None:
        self.passthrough = passthrough
        self.open_sink = open_sink
        self.out: Optional[LogSink] = None
        self.err: Optional[LogSink] = None
        self.on_room: Callable[[], None] = lambda: None  # wakes the supervisor's loop
        self._early: list[str] = []  # notes made before the sinks exist

    def open(self, job: Job, on_room: Callable[[], None]) -> None:
        if self.passthrough:
            return
        self.on_room = on_room
        self.out, self.err = self._open(job)
        for text in self._early:
            self.err.note(text)
        self._early = []

    def _open(self, job: Job) -> tuple[LogSink, LogSink]:
        """The job's stdout and stderr sinks: one sink when both go to one file (`>> out 2>&1`),
        since two would rotate it under each other. A log that had no room wakes the loop the
        moment it has (`on_room`): a held pipe is read again at once, not at the next timeout."""
        out = self.open_sink(job.stdout_log, job.log_max_bytes, job.log_backups)
        try:
            err = out if job.stderr_log == job.stdout_log else \
                self.open_sink(job.stderr_log, job.log_max_bytes, job.log_backups)
        except BaseException:
            out.close()
            raise
        out.on_room = err.on_room = self.on_room
        return out, err

    def note(self, text: str) -> None:
        if self.passthrough:
            return
        if self.err is not None:
            self.err.note(text)
        else:
            self._early.append(text)  # before the sinks exist: written once they do

    def note_out(self, text: str) -> None:
        """A marker in the stdout log too (where a periodic run's output begins)."""
        if self.out is not None:
            self.out.note(text)

    def reopen(self) -> None:
        """SIGHUP: logrotate moved the files."""
        if self.out is not None and self.err is not None:
            self.out.reopen()
            self.err.reopen()

    def take(self, old: Job, new: Job, pump: Pump) -> None:
        """A re-read definition: new log files (OSError if one cannot be opened; the old stay), or
        new sizes for the same ones."""
        if self.out is None or self.err is None:
            return
        if (new.stdout_log, new.stderr_log) != (old.stdout_log, old.stderr_log):
            out, err = self._open(new)
            moved = {id(self.out): out, id(self.err): err}
            for fd, sink in list(pump.sinks.items()):
                pump.sinks[fd] = moved.get(id(sink), sink)
            self.close()
            self.out, self.err = out, err
        else:
            for sink in {id(self.out): self.out, id(self.err): self.err}.values():
                sink.max_bytes, sink.backups = new.log_max_bytes, new.log_backups

    def close(self) -> None:
        if self.out is not None and self.err is not None:
            self.out.close()
            self.err.close()

