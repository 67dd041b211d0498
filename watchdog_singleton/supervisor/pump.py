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

    class Pump(Protocol):
        """What a job's lifecycle uses of a pump: OutputPump, or its PumpShare in the shared resident."""

        @property
        def sinks(self) -> dict[int, Sink]: ...
        def watch(self, fd: int, sink: Sink) -> None: ...
        def next_wake(self, now: float) -> Optional[float]: ...
        def wait(self, timeout: float) -> None: ...
        def drain_all(self) -> None: ...
        def close(self) -> None: ...

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
        self.handlers: dict[int, Callable[[], None]] = {}  # other descriptors polled here (the house's socket)
        self.held: dict[int, float] = {}  # pipes not read for now (their log is full) -> since when
        self.overflowing: set[int] = set()  # pipes whose log stayed full too long: read, and drop

    def watch(self, fd: int, sink: Sink) -> None:
        self.sinks[fd] = sink
        self.poller.register(fd, _READABLE)

    def listen(self, fd: int, handler: Callable[[], None]) -> None:
        """Call `handler()` whenever `fd` is readable (the shared resident's socket and its peers)."""
        self.handlers[fd] = handler
        self.poller.register(fd, select.POLLIN)

    def unlisten(self, fd: int) -> None:
        if self.handlers.pop(fd, None) is not None:
            self.poller.unregister(fd)

    def next_wake(self, now: float, fds: Optional[set[int]] = None) -> Optional[float]:
        held = self.held if fds is None else [fd for fd in self.held if fd in fds]
        return now + HELD_RECHECK if held else None

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
            elif fd in self.handlers:
                self.handlers[fd]()

    def drain_all(self, fds: Optional[set[int]] = None) -> None:
        """Read every pipe (of `fds`, one job's in the shared resident) to its end (the tree is
        gone, so its writers are)."""
        for fd in list(self.sinks if fds is None else fds):
            if fd in self.sinks:
                self._drain(fd, until_eof=True)

    def close(self, fds: Optional[set[int]] = None) -> None:
        for fd in list(self.sinks if fds is None else fds):
            if fd in self.sinks:
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


class PumpShare:
    """One job's part of the shared resident's pump: the loop and its poll are shared, but a job's
    stop drains and closes its own pipes only (another job's live pipe would read as a stray
    writer's and be closed)."""

    def __init__(self, pump: OutputPump) -> None:
        self.pump = pump
        self.fds: set[int] = set()

    @property
    def sinks(self) -> dict[int, Sink]:
        return self.pump.sinks

    def watch(self, fd: int, sink: Sink) -> None:
        self.fds.add(fd)
        self.pump.watch(fd, sink)

    def next_wake(self, now: float) -> Optional[float]:
        self.fds &= set(self.pump.sinks)
        return self.pump.next_wake(now, self.fds)

    def wait(self, timeout: float) -> None:
        self.pump.wait(timeout)

    def drain_all(self) -> None:
        self.pump.drain_all(self.fds)
        self.fds &= set(self.pump.sinks)

    def close(self) -> None:
        self.pump.close(self.fds)
        self.fds.clear()
