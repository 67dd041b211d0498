"""The child-process loop that the resident supervisor and the farm (and the farm's nursery) run on:
what wakes the loop, reaping what exited, and the subreaper setting that brings orphans to us.

    wakeups = Wakeups((SIGTERM, SIGINT, SIGHUP))  # SIGCHLD is caught too: an exit ends the wait
    fd = wakeups.open()                           # poll fd beside the loop's other descriptors
    while True:
        wakeups.drain()                           # (the supervisor's output pump drains it)
        for sig in wakeups.take(): ...            # the signals caught since the last look
        for pid, code in reap(): ...              # procs.reap_exited, or the fake world's
        wait(timeout)                             # poll/select on fd, or the fake world's clock
    wakeups.close()

Signals are not acted on in their handler: the handler notes the signal and the wake-up fd ends the
wait, so the loop acts on them at its top, in order, between two whole steps. `wake()` is the same
from anywhere (a thread that stopped a tree, a log with room again, the lease's renew thread).
Children are started by `proc.spawn` (fork and exec, no subprocess); `wait_child` waits for one
(a helper process) with a timeout, the way Popen.wait would. Standard library only, and light:
the resident supervisor imports this.
"""

from __future__ import annotations

import _signal
import os
import time

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing stays out of the resident supervisor's memory; annotations are strings
    from typing import Callable, Optional

SIGCHLD = _signal.SIGCHLD
PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> bool:
    """Orphans of our tree re-parent to us instead of init; the setting survives exec (not fork)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def has_children() -> bool:
    """Whether we have any child left, living or exited and not yet reaped (WNOWAIT: nothing is
    reaped here). A subreaper with none has no descendant: every one left when its parent died
    would have become its child."""
    try:
        os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return False
    return True


def own_children() -> Optional[list[int]]:
    """Our children's pids, living or exited and not yet reaped, without looking at any other
    process: each thread's /proc/self/task/TID/children (a child is listed under the thread that
    forked it, an orphan under the thread the kernel gave it to). None when the kernel does not
    say (built without CONFIG_PROC_CHILDREN), or a thread ended while we read (its children
    moved to another thread, maybe one already read): then only a scan of /proc tells."""
    pids: list[int] = []
    try:
        for tid in os.listdir("/proc/self/task"):
            fd = os.open(f"/proc/self/task/{tid}/children", os.O_RDONLY | os.O_CLOEXEC)
            try:
                # The file can skip a child that leaves the list between two reads; a child of
                # ours stays listed until we reap it, and the loop that reads here is the one that reaps.
                text = b""
                while True:
                    chunk = os.read(fd, 65536)
                    if not chunk:
                        break
                    text += chunk
            finally:
                os.close(fd)
            pids.extend(int(pid) for pid in text.split())
    except OSError:
        return None
    return pids


def wait_child(pid: int, timeout: float, clock: Callable[[], float] = time.monotonic,
               sleep: Callable[[float], None] = time.sleep) -> Optional[int]:
    """Reap child `pid` within `timeout` seconds: its exit code, or None if it still runs (or was
    reaped already, by the loop's reap of every child)."""
    deadline = clock() + timeout
    pause = 0.001
    while True:
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return None
        if done:
            return os.waitstatus_to_exitcode(status)
        if clock() >= deadline:
            return None
        sleep(pause)
        pause = min(pause * 2, 0.05)


def end_child(pid: int) -> None:
    """SIGKILL child `pid` (a helper that did not answer) and reap it."""
    try:
        os.kill(pid, 9)
    except ProcessLookupError:
        pass
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


class Wakeups:
    """What wakes a child-process loop: the signals it handles (kept in `signals`, in order, for
    the loop to act on), SIGCHLD, and `wake()` from anywhere, all through one self-pipe."""

    def __init__(self, handled: tuple[int, ...]) -> None:
        self.handled = handled
        self.signals: list[int] = []
        self.read_fd = self.write_fd = -1  # no pipe yet: `wake` does nothing
        self._old_wakeup = -1
        self._old_handlers: dict[int, object] = {}

    def open(self) -> int:
        """Catch the signals; returns the pipe's read end. A full pipe loses nothing (the loop
        wakes anyway, and the signals are in `signals`): no warning for it."""
        self.read_fd, self.write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._old_wakeup = _signal.set_wakeup_fd(self.write_fd, warn_on_full_buffer=False)
        self._old_handlers = {sig: _signal.signal(sig, self.caught) for sig in self.handled}
        if SIGCHLD not in self.handled:
            self._old_handlers[SIGCHLD] = _signal.signal(SIGCHLD, _exited)
        return self.read_fd

    def caught(self, signum: int, frame: object = None) -> None:
        self.signals.append(signum)

    def take(self) -> list[int]:
        """The signals caught since the last look, oldest first."""
        taken, self.signals = self.signals, []
        return taken

    def wake(self) -> None:
        try:
            os.write(self.write_fd, b"\0")
        except OSError:
            pass  # the pipe is full (the loop wakes anyway), or not open

    def drain(self) -> None:
        try:
            while os.read(self.read_fd, 4096):
                pass
        except OSError:
            pass  # empty (EAGAIN), or not open

    def restore(self) -> None:
        """Give the signals back to whoever had them; the pipe stays open (`wake` still works)."""
        if self._old_handlers:
            _signal.set_wakeup_fd(self._old_wakeup)
            for sig, handler in self._old_handlers.items():
                _signal.signal(sig, handler)
            self._old_handlers = {}

    def close(self) -> None:
        self.restore()
        for fd in (self.read_fd, self.write_fd):
            if fd >= 0:
                os.close(fd)
        self.read_fd = self.write_fd = -1


def _exited(signum: int, frame: object) -> None:
    """SIGCHLD: nothing to do in the handler; its byte on the wake-up fd ends the loop's wait."""
