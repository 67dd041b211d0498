"""Where a daemon's stdout or stderr goes: a file, appended, rotated by size at line boundaries.

A line that does not end within the limit may overrun it by `overrun` bytes (an eighth of the
limit, at least 4 KiB); output with no newline in reach (a `\r` progress bar) is cut there, and
the cut is marked by a line of ours at the end of that file, before it is rotated:
`[watchdog-singleton TIME] line split at rotation: no newline in N bytes (it goes on in the next file)`.
No file ever grows past max_bytes + overrun.

The supervisor's loop only hands bytes over (`feed`); a writer thread does the file I/O, so a
slow or full disk never stops the loop from draining the daemon's pipe. While the file cannot
be written (ENOSPC, EDQUOT, EIO) data waits in memory up to `buffer_limit`; past that it is
dropped and counted, and a marker line says how much was lost once writing resumes.
"""

from __future__ import annotations

import _thread
import os
import time
from _collections import deque

from ..files import open_log_file
from ..timefmt import iso

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing stays out of the resident supervisor's memory; annotations are strings
    from typing import Callable, Deque, Optional, Union

RETRY_SECONDS = 1.0
MIN_OVERRUN = 4096
MARKER_ROOM = 256  # kept free under the hard limit for the split marker


class _Condition:
    """The part of threading.Condition we use, for one waiting thread, on _thread: threading
    and collections cost the resident supervisor about 1 MiB."""

    def __init__(self) -> None:
        self._lock = _thread.RLock()  # reentrant, as threading.Condition's default
        self._wake = _thread.allocate_lock()
        self._wake.acquire()

    def __enter__(self) -> "_Condition":
        self._lock.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self._lock.release()

    def notify(self) -> None:
        if self._wake.locked():
            self._wake.release()

    def wait(self, timeout: Optional[float] = None) -> None:
        """Release the lock (held once), wait for a notify (or the timeout), take the lock again.
        A notify that came first is not lost; a spurious return is possible: callers loop."""
        self._lock.release()
        try:
            if timeout is None:
                self._wake.acquire()
            else:
                self._wake.acquire(True, timeout)
        finally:
            self._lock.acquire()


class _Lost:
    """A place in the stream where output was dropped; stands in the queue where the loss was."""

    def __init__(self, count: int) -> None:
        self.count = count


class _PartialWrite(Exception):
    def __init__(self, written: int, error: OSError) -> None:
        super().__init__(str(error))
        self.written = written
        self.error = error


class LogSink:
    """Raises files.RefusedFile (an OSError) at once if the path holds a FIFO, a symlink or
    another user's file, and OSError if the file cannot be opened."""

    def __init__(self, path: str, max_bytes: int = 0, backups: int = 0,
                 buffer_limit: int = 16 * 1024 * 1024,
                 wall: Callable[[], float] = time.time) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self.buffer_limit = buffer_limit
        self.wall = wall
        self._queue: Deque[Union[bytes, str, _Lost]] = deque()
        self._queued = 0
        self._last_error: Optional[str] = None
        self._reopen = False
        self._closing = False
        self._cond = _Condition()
        self._fd: Optional[int] = None
        self._size = 0
        self._at_line_start = True
        self._line_bytes = 0  # bytes since the last newline in the current file
        self._wanted = 0  # the room has_room was refused; on_room is due once it is there
        self.on_room: Optional[Callable[[], None]] = None
        self._open()
        self._finished = _thread.allocate_lock()
        self._finished.acquire()  # released by the writer thread as it ends
        _thread.start_new_thread(self._writer, ())

    # -- the supervisor's side -------------------------------------------------------------
    def feed(self, data: bytes) -> None:
        with self._cond:
            if self._queued + len(data) > self.buffer_limit:
                if self._queue and isinstance(self._queue[-1], _Lost):
                    self._queue[-1].count += len(data)
                else:
                    self._queue.append(_Lost(len(data)))
                    self._cond.notify()
                return
            self._queue.append(data)
            self._queued += len(data)
            self._cond.notify()

    def note(self, text: str) -> None:
        """An event line of ours, written on a line of its own."""
        with self._cond:
            self._queue.append(text)
            self._cond.notify()

    def reopen(self) -> None:
        """Reopen the file at its path (after an external logrotate moved it)."""
        with self._cond:
            self._reopen = True
            self._cond.notify()

    def close(self, timeout: float = 5.0) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify()
        if self._finished.acquire(True, timeout):
            self._finished.release()

    def has_room(self, size: int) -> bool:
        """Whether `size` more bytes fit; if not, `on_room` is called (from the writer thread)
        as soon as they do, so that a held pipe is read again at once."""
        with self._cond:
            room = self._queued + size <= self.buffer_limit
            self._wanted = 0 if room else size
            return room

    def pending(self) -> int:
        with self._cond:
            return self._queued

    # -- the writer thread -----------------------------------------------------------------
    def _writer(self) -> None:
        try:
            self._run()
        finally:
            self._finished.release()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._reopen and not self._closing:
                    self._cond.wait()
                if self._reopen:
                    self._reopen = False
                    self._close_fd()
                if not self._queue and self._closing:
                    self._close_fd()
                    return
                item = self._queue[0] if self._queue else None
            try:
                if self._fd is None:
                    self._open()
                if isinstance(item, _Lost):
                    self._write_marker(f"{item.count} bytes of output lost ({self._last_error or 'buffer full'})")
                elif isinstance(item, str):
                    self._write_marker(item)
                elif item is not None:
                    self._write_lines(item)
                if item is not None:
                    with self._cond:
                        self._queue.popleft()
                        if isinstance(item, bytes):
                            self._queued -= len(item)
                        roomy = self._wanted and self._queued + self._wanted <= self.buffer_limit
                        if roomy:
                            self._wanted = 0
                    if roomy and self.on_room is not None:
                        self.on_room()
                self._last_error = None
            except _PartialWrite as exc:
                self._consume_front(exc.written)
                if self._give_up_or_wait(exc.error):
                    return
            except OSError as exc:
                if self._give_up_or_wait(exc):
                    return

    def _give_up_or_wait(self, error: OSError) -> bool:
        """After a failed write: wait before retrying, or, when closing, drop what is left."""
        self._last_error = error.strerror or str(error)
        with self._cond:
            if not self._closing:
                self._cond.wait(RETRY_SECONDS)
                return False
            # Shutting down on a full disk: give up on what is left rather than hang.
            self._queue.clear()
            self._queued = 0
        self._close_fd()
        return True

    def _consume_front(self, count: int) -> None:
        with self._cond:
            head = self._queue[0]
            if isinstance(head, bytes) and count:
                self._queue[0] = head[count:]
                self._queued -= count

    @property
    def overrun(self) -> int:
        """How far past max_bytes a line may go before it is split."""
        return max(MIN_OVERRUN, self.max_bytes // 8)

    def _open(self) -> None:
        parent = os.path.dirname(self.path)
        if parent and not os.path.isdir(parent):
            os.makedirs(parent, 0o700, exist_ok=True)
        self._fd = open_log_file(self.path)
        self._size = os.fstat(self._fd).st_size
        self._line_bytes = 0

    def _close_fd(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _write_marker(self, text: str) -> None:
        stamp = iso(self.wall())
        line = f"[watchdog-singleton {stamp}] {text}\n".encode()
        self._write_lines(line if self._at_line_start else b"\n" + line)

    def _write_lines(self, data: bytes) -> None:
        """Write `data`, rotating first whenever the file is full and we stand at a line start,
        and splitting a line that finds no newline within the overrun."""
        done = 0
        while done < len(data):
            try:
                if self.max_bytes and self._size >= self.max_bytes and self._at_line_start:
                    self._rotate()
                rest = data[done:]
                part = self._next_part(rest)
                split = part < 0
                if split:
                    part = max(0, self.max_bytes + self.overrun - MARKER_ROOM - self._size)
                self._write_all(rest[:part])
                done += part
            except _PartialWrite as exc:
                raise _PartialWrite(done + exc.written, exc.error) from None
            except OSError as exc:  # a failed rotation: what went out so far is not written again
                raise _PartialWrite(done, exc) from None
            if split:
                try:
                    self._split_line()
                except _PartialWrite as exc:  # the marker's bytes are not the data's
                    raise _PartialWrite(done, exc.error) from None
                except OSError as exc:
                    raise _PartialWrite(done, exc) from None

    def _next_part(self, rest: bytes) -> int:
        """How many bytes of `rest` go into this file now; -1: split the line at the hard limit."""
        room = self.max_bytes - self._size if self.max_bytes else len(rest)
        if room >= len(rest):
            return len(rest)
        cut = rest.rfind(b"\n", 0, max(room, 0))
        if cut >= 0:
            return cut + 1
        # No line ends within the limit: let the line overrun it, up to where the marker still fits.
        reach = self.max_bytes + self.overrun - MARKER_ROOM - self._size
        cut = rest.find(b"\n", 0, max(reach, 0))
        if cut >= 0:
            return cut + 1
        return len(rest) if len(rest) <= reach else -1

    def _split_line(self) -> None:
        stamp = iso(self.wall())
        marker = (f"[watchdog-singleton {stamp}] line split at rotation: no newline in "
                  f"{self._line_bytes} bytes (it goes on in the next file)\n").encode()
        self._write_all((b"" if self._at_line_start else b"\n") + marker[:MARKER_ROOM - 1])
        self._rotate()

    def _write_all(self, data: bytes) -> None:
        assert self._fd is not None
        view = memoryview(data)
        written = 0
        while written < len(view):
            try:
                n = os.write(self._fd, view[written:])
            except OSError as exc:
                raise _PartialWrite(written, exc) from None
            end = data.rfind(b"\n", written, written + n)
            self._line_bytes = written + n - end - 1 if end >= 0 else self._line_bytes + n
            written += n
            self._size += n
            self._at_line_start = view[written - 1] == ord("\n")

    def _rotate(self) -> None:
        self._close_fd()
        if self.backups > 0:
            for i in range(self.backups - 1, 0, -1):
                src = f"{self.path}.{i}"
                if os.path.lexists(src):
                    os.replace(src, f"{self.path}.{i + 1}")
            os.replace(self.path, f"{self.path}.1")
        else:
            os.unlink(self.path)
        self._open()
