"""The output pump: moves the daemon's stdout and stderr from their pipes into log sinks.

It is also where the supervisor waits: `wait(timeout)` sleeps in poll(2) on the pipes and the
signal wake-up pipe, so output, signals and timers all end the same wait.

Backpressure: while a sink's queue is full the pipe is not read, so the daemon waits and a disk
that stalls for a moment loses nothing; a sink stuck longer than BACKPRESSURE_SECONDS gets its
pipe read again and the output dropped and counted, so the daemon is never blocked for long.
"""

from __future__ import annotations

import os
import select

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing stays out of the resident supervisor's memory; annotations are strings
    from typing import Callable, Optional, Protocol

    class Sink(Protocol):
        def feed(self, data: bytes) -> None: ...
        def has_room(self, size: int) -> bool: ...

READ_SIZE = 1024 * 1024
BACKPRESSURE_SECONDS = 0.5
HELD_RECHECK = 0.05  # how often a held pipe's sink is asked for room again
_READABLE = select.POLLIN | select.POLLHUP | select.POLLERR


class OutputPump:
    def __init__(self, wake_fd: int, clock: Callable[[], float]) -> None:
        self.wake_fd = wake_fd
        self.clock = clock
        self.poller = select.poll()
        self.poller.register(wake_fd, select.POLLIN)
        self.sinks: dict[int, Sink] = {}
        self.held: dict[int, float] = {}  # pipes not read for now (their log is full) -> since when
        self.overflowing: set[int] = set()  # pipes whose log stayed full too long: read, and drop

    def watch(self, fd: int, sink: Sink) -> None:
        self.sinks[fd] = sink
        self.poller.register(fd, _READABLE)

    def next_wake(self, now: float) -> Optional[float]:
        return now + HELD_RECHECK if self.held else None

    def wait(self, timeout: float) -> None:
        """Sleep until output, a signal, or `timeout` seconds; move what output arrived."""
        if self.held or self.overflowing:
            self._release_held(self.clock())
        try:
            events = self.poller.poll(max(0, int(timeout * 1000 + 0.999)))
        except InterruptedError:
            return
        for fd, _ in events:
            if fd == self.wake_fd:
                try:
                    while os.read(fd, 512):
                        pass
                except BlockingIOError:
                    pass
            elif fd in self.sinks:
                self._drain(fd)

    def drain_all(self) -> None:
        """Read every pipe to its end (the tree is gone, so its writers are)."""
        for fd in list(self.sinks):
            self._drain(fd, until_eof=True)

    def close(self) -> None:
        for fd in list(self.sinks):
            self._forget(fd)

    def _drain(self, fd: int, until_eof: bool = False) -> None:
        while fd in self.sinks:
            sink = self.sinks[fd]
            if not until_eof and fd not in self.overflowing and not sink.has_room(READ_SIZE):
                self.poller.unregister(fd)
                self.held[fd] = self.clock()
                return
            try:
                data = os.read(fd, READ_SIZE)
            except BlockingIOError:
                if until_eof:
                    # A writer outside the tree (a stray that inherited the pipe) keeps it open:
                    # what it wrote so far is taken; the rest is not waited for.
                    self._forget(fd)
                return
            except OSError:
                data = b""
            if not data:
                self._forget(fd)
                return
            sink.feed(data)
            if not until_eof:
                return

    def _forget(self, fd: int) -> None:
        if self.held.pop(fd, None) is None:
            try:
                self.poller.unregister(fd)
            except KeyError:
                pass
        self.overflowing.discard(fd)
        self.sinks.pop(fd, None)
        os.close(fd)

    def _release_held(self, now: float) -> None:
        """Read held pipes again once their log has room, or drop their output once held too long."""
        for fd, since in list(self.held.items()):
            room = self.sinks[fd].has_room(READ_SIZE)
            if room or now - since >= BACKPRESSURE_SECONDS:
                if not room:
                    self.overflowing.add(fd)
                del self.held[fd]
                self.poller.register(fd, _READABLE)
        for fd in list(self.overflowing):
            if self.sinks[fd].has_room(READ_SIZE):
                self.overflowing.discard(fd)
