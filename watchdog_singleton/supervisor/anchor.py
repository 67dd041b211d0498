"""The anchor: a small process above the shared resident, so that a kill -9 of the resident affects
no job (install --shared).

    tick ──fork──> anchor (this module, `python -I -S`, a child subreaper)
                     └── resident (housemain.py) ── each job's daemon

The tick that becomes the shared resident splits first (tick/handover.py exec_house): its process
becomes the anchor, its child goes on to be the resident. Over an inherited socketpair the resident
hands the anchor (SCM_RIGHTS, housewire.send) a duplicate of each member's lock descriptors and of
its daemon's output pipes' read ends, at each daemon start (the job's earlier set is closed), and
asks it to drop them when the job leaves (answered, so the lock is free once the stop is answered):

    {"op": "hold", "name": NAME, "pid": PID, "lock": 2, "pipes": 2} + [lock, folder, out, err]
    {"op": "drop", "name": NAME}  -> {"dropped": NAME}

The anchor never reads those pipes; it keeps them open, so a daemon's write never meets a pipe
without a reader, and its lock is never free while a job is ours. When the resident dies, its
children re-parent to the anchor, which at once starts a new resident (fork and exec, as the tick
does) and hands it every job's set over a new socketpair:

    {"op": "job", "name": NAME, "pid": PID | None, "code": CODE | None, "lock": N, "pipes": N} + fds
    {"op": "end"}
    {"op": "exit", "pid": PID, "code": CODE}      (each child of ours reaped from then on)

The new resident adopts them (anchorlink.py): the same daemons, the output read on from where the
dead resident left it, and each adopted daemon's exit status, which only its parent (the anchor
now) can know. The anchor exits once a resident exits and no job is held (a stop, an uninstall,
the last job gone), and gives up after STORM_STARTS new residents within STORM_SECONDS (what is
left then falls back to a tick's adoption, supervisor/adopt.py). SIGTERM, SIGINT, SIGHUP and
SIGUSR2 are passed on to the resident. It loads only this module and housewire.py, and at its start
proc/fdlimit.py with `resource` to raise its open-file limit (4 descriptors a job): about 2 MiB of
private memory.
"""

from __future__ import annotations

import _signal
import os
import time

from .housewire import receive, send

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing stays out of the anchor's memory; annotations are strings
    import _socket
    from typing import Any, Callable, Optional

    Start = Callable[[], tuple[int, "Link"]]

BOOT = ("import sys; sys.path.append(sys.argv[1]); from watchdog_singleton.supervisor.anchor import main; "
        "sys.exit(main(sys.argv[2:]))")
STORM_STARTS = 5  # new residents within STORM_SECONDS: the anchor gives up past this many
STORM_SECONDS = 60.0
HANGUP_SECONDS = 2.0  # EOF on the link with the resident still there this long: it let go of us
PASSED_ON = (_signal.SIGTERM, _signal.SIGINT, _signal.SIGHUP, _signal.SIGUSR2)


class Link:
    """One end of the socketpair to a resident: what the anchor sends and reads there."""

    def __init__(self, sock: _socket.socket) -> None:
        self.sock = sock

    def fileno(self) -> int:
        return int(self.sock.fileno())

    def send(self, message: dict[str, Any], fds: tuple[int, ...] = ()) -> None:
        send(self.sock, message, fds)

    def receive(self) -> tuple[Optional[dict[str, Any]], list[int]]:
        return receive(self.sock)

    def close(self) -> None:
        self.sock.close()


class Held:
    """One job's descriptors: its lock's (0 or 2) then its daemon's output pipes (0 or 2)."""

    __slots__ = ("pid", "fds", "lock", "pipes")

    def __init__(self, pid: Optional[int], fds: list[int], lock: int, pipes: int) -> None:
        self.pid, self.fds, self.lock, self.pipes = pid, fds, lock, pipes


class Anchor:
    """The anchor's decisions, apart from processes and sockets (tests drive it in the fake world).

    `start()` starts a new resident: (its pid, the link to it). `is_child(pid)`: that process is
    ours and not reaped (a daemon re-parented to us). `close(fd)` closes one descriptor."""

    def __init__(self, resident: int, link: Optional[Link], start: Start, is_child: Callable[[int], bool],
                 close: Callable[[int], None] = os.close, clock: Callable[[], float] = time.monotonic) -> None:
        self.resident: Optional[int] = resident
        self.link = link
        self.start = start
        self.is_child = is_child
        self.close = close
        self.clock = clock
        self.held: dict[str, Held] = {}
        self.pending: dict[int, int] = {}  # exits reaped while no resident could be told
        self.starts: list[float] = []
        self.done = False  # the anchor exits
        self.gave_up = False
        self.hung_up_at: Optional[float] = None  # EOF from a resident not yet reaped

    # -- what the resident says ------------------------------------------------------------
    def message(self, message: Optional[dict[str, Any]], fds: list[int]) -> None:
        if message is None:  # EOF: the resident is going (its exit, reaped, decides what follows)
            self._closed()
            if self.resident is not None:
                self.hung_up_at = self.clock()
            return
        op, name = message.get("op"), str(message.get("name", ""))
        lock, pipes = message.get("lock", 0), message.get("pipes", 0)
        if op == "hold" and isinstance(lock, int) and isinstance(pipes, int) and lock + pipes == len(fds):
            pid = message.get("pid")
            self._forget(name)
            self.held[name] = Held(pid if isinstance(pid, int) else None, fds, lock, pipes)
            return
        self._close_all(fds)
        if op == "drop":
            self._forget(name)
            self._tell({"dropped": name})

    # -- what exited -----------------------------------------------------------------------
    def reaped(self, pid: int, code: int) -> None:
        if pid != self.resident:
            if self.link is None or not self._tell({"op": "exit", "pid": pid, "code": code}):
                self.pending[pid] = code  # a daemon re-parented to us: its status goes to the next resident
            return
        self.resident, self.hung_up_at = None, None
        self._closed()
        if not self.held:
            self.done = True  # a clean end (no job left, or all stopped), or nothing of ours to keep
            return
        now = self.clock()
        self.starts = [t for t in self.starts if now - t < STORM_SECONDS] + [now]
        if len(self.starts) > STORM_STARTS:
            self.gave_up = self.done = True  # each new resident dies at once: a tick's adoption is left
            for name in list(self.held):
                self._forget(name)
            return
        self.resident, self.link = self.start()
        self._hand_over()

    def timeout(self) -> Optional[float]:
        """How long the real loop may wait for the next event (None: until one comes)."""
        if self.hung_up_at is None:
            return None
        return max(0.0, self.hung_up_at + HANGUP_SECONDS - self.clock())

    def look(self) -> None:
        """A resident that closed the link and lives on (it stopped waiting for a stopped anchor)
        keeps its jobs itself: ours would be stale, and a new resident must never be started for
        them when it exits. Everything let go; the anchor ends."""
        if self.hung_up_at is not None and self.resident is not None and \
                self.clock() - self.hung_up_at >= HANGUP_SECONDS:
            self.quit()
            self.done = True

    def _hand_over(self) -> None:
        """Every job's set to the new resident, with how its daemon is: running (our child now),
        ended with a known status, or none to adopt (it ended under the dead resident)."""
        for name, held in list(self.held.items()):
            code = self.pending.pop(held.pid, None) if held.pid is not None else None
            running = held.pid is not None and code is None and self.is_child(held.pid)
            pid = held.pid if running or code is not None else None
            message = {"op": "job", "name": name, "pid": pid, "code": code, "lock": held.lock, "pipes": held.pipes}
            if not self._tell(message, tuple(held.fds)):
                return  # it died already: its exit, reaped, starts the next one
        self.pending.clear()  # leftovers of a tree: no job's daemon
        self._tell({"op": "end"})

    def _tell(self, message: dict[str, Any], fds: tuple[int, ...] = ()) -> bool:
        if self.link is None:
            return False
        try:
            self.link.send(message, fds)
        except OSError:  # its end is closed: as an EOF (a resident that lives on let go of us, see look)
            self._closed()
            if self.resident is not None:
                self.hung_up_at = self.clock()
            return False
        return True

    def _closed(self) -> None:
        if self.link is not None:
            try:
                self.link.close()
            except OSError:
                pass
            self.link = None

    def _forget(self, name: str) -> None:
        held = self.held.pop(name, None)
        if held is not None:
            self._close_all(held.fds)

    def _close_all(self, fds: list[int]) -> None:
        for fd in fds:
            try:
                self.close(fd)
            except OSError:
                pass

    def quit(self) -> None:
        """On the way out: every descriptor let go."""
        for name in list(self.held):
            self._forget(name)
        self._closed()


# -- the real process ------------------------------------------------------------------------
def reap_all() -> list[tuple[int, int]]:
    """procs.reap_exited's loop, written here: the anchor loads its module and the wire only."""
    exited: list[tuple[int, int]] = []
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return exited
        if pid == 0:
            return exited
        exited.append((pid, os.waitstatus_to_exitcode(status)))


def is_child(pid: int) -> bool:
    """A child of ours, running or exited and not yet reaped (then its status follows)."""
    try:
        os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return False
    return True


def starter(package_parent: str, root: str, house: tuple[int, int, str], env: dict[str, str],
            nofile: Optional[int] = None) -> Start:
    """Start a new resident as the tick does (tick/handover.py exec_house), with no first job and
    the link to us: it adopts what we hand it."""
    import _socket

    def start() -> tuple[int, Link]:
        ours, theirs = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_STREAM)
        pid = os.fork()
        if pid == 0:  # what the child loads goes with its exec: the anchor stays small
            from ..errors import FAILED

            try:
                ours.close()
                from ..tick.becoming import exec_resident

                exec_resident(package_parent, root, house, theirs.detach(), env, nofile)
            finally:
                os._exit(FAILED)
        theirs.close()
        return pid, Link(ours)
    return start


def main(argv: list[str]) -> int:
    """python -I -S -c BOOT PACKAGE_PARENT ROOT RESIDENT_PID LINK_FD HOUSE_FD HOUSE_DIR_FD HOUSE_DIR"""
    import _socket
    import select

    root, resident_text, link_text, house_fd, house_dir_fd, house_dir = argv
    from ..proc.fdlimit import raise_soft

    nofile = raise_soft()  # 4 descriptors a job; each new resident is told the limit we were started with
    package_parent = __file__.rsplit("/watchdog_singleton/", 1)[0]
    link = Link(_socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM, 0, int(link_text)))
    anchor = Anchor(int(resident_text), link,
                    starter(package_parent, root, (int(house_fd), int(house_dir_fd), house_dir), dict(os.environ),
                            nofile),
                    is_child)
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    _signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    _signal.signal(_signal.SIGCHLD, lambda signum, frame: None)

    def pass_on(signum: int, frame: object) -> None:
        if anchor.resident is not None:
            try:
                os.kill(anchor.resident, signum)
            except OSError:
                pass
    for sig in PASSED_ON:
        _signal.signal(sig, pass_on)
    for pid, code in reap_all():  # a resident that died before our handler was set
        anchor.reaped(pid, code)
    while not anchor.done:
        poller = select.poll()
        poller.register(wake_r, select.POLLIN)
        if anchor.link is not None:
            poller.register(anchor.link.fileno(), select.POLLIN)
        wait = anchor.timeout()
        try:
            events = poller.poll(None if wait is None else int(wait * 1000) + 1)
        except InterruptedError:
            events = []
        for fd, _ in events:
            if fd == wake_r:
                try:
                    while os.read(wake_r, 512):
                        pass
                except OSError:
                    pass
            elif anchor.link is not None and fd == anchor.link.fileno():
                try:
                    message, fds = anchor.link.receive()
                except (OSError, ValueError, EOFError, TypeError):
                    message, fds = None, []
                anchor.message(message, fds)
        exited = reap_all()  # the resident's exit last: the daemons' that came with it are known then
        for pid, code in sorted(exited, key=lambda e: e[0] == anchor.resident):
            anchor.reaped(pid, code)
        anchor.look()
    anchor.quit()
    return 0
