"""The shared resident's side of its anchor (anchor.py): what it hands the anchor, and what it takes
from it after a kill -9 of the resident before it.

    link = AnchorLink(house, sock)   # the socketpair end the resident inherited (housemain.py)
    link.open()                      # house.anchor: take, each daemon start and leave report here
    link.take_handed(root)           # a resident the anchor started: adopt every job it hands over

At each daemon start the anchor gets a duplicate of the job's lock descriptors and of the daemon's
output pipes' read ends (its earlier set is closed); when the job leaves, the anchor drops them and
says so before the lock is let go here (a `stop` answered means a free lock). A periodic job is
not handed (its run ends on its own; a tick starts the next).

A job handed over is adopted much as a tick's adoption does (adopt.py), with what the anchor kept:
the lock is held (no `Borrowed`), the pipes are read on from where the dead resident left them (what
the daemon wrote meanwhile is in them, up to a pipe's buffer), and the daemon's exit, reaped by the
anchor (its parent now), comes over the link with its status. What is left of its tree when it
ends is found in /proc (those processes are the anchor's children, not ours), and stopped before
the restart as ever.

When the anchor goes (EOF on the link), each job's log says so once and the resident runs on
without one: its daemons are its own children, untouched.
"""

from __future__ import annotations

from ..lock.flock import FlockLock
from ..state.store import CARRIED
from .adopt import running, watch_member
from .housewire import receive, send

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing stays out of the resident supervisor's memory; annotations are strings
    import _socket
    from typing import Any, Callable, Optional

    from ..job.model import Job
    from ..lock.flock import SingletonLock
    from .house import House, Member
    from .seams import Seams

    MakeLock = Callable[[Job, list[int]], SingletonLock]

LINK_SECONDS = 5.0  # the anchor answers a drop, and hands jobs over, at once: past this it is stopped or gone
LOST = ("the anchor above the shared supervisor is gone: the jobs run on, but a kill -9 of the shared "
        "supervisor now leaves their output without a reader until a tick adopts them")


def flock_of(job: Job, fds: list[int]) -> SingletonLock:
    lock = FlockLock(job.lock_dir, job.name)
    lock.fd, lock.dir_fd = fds
    return lock


def close_all(fds: list[int]) -> None:
    import os

    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def lock_fds(lock: SingletonLock) -> tuple[int, ...]:
    """A member's lock descriptors while it holds them (an adopted `Borrowed` one: once taken)."""
    if not getattr(lock, "held", True):
        return ()
    return tuple(getattr(lock, "lock", lock).inheritable_fds())


class AnchorLink:
    def __init__(self, house: House, sock: Optional[_socket.socket], make_lock: MakeLock = flock_of) -> None:
        self.house = house
        self.sock = sock
        self.make_lock = make_lock
        self.send, self.receive = send, receive  # housewire's; tests join both ends in one process
        self.holding: set[str] = set()  # the jobs whose descriptors the anchor keeps
        self.handing = False  # taking the anchor's jobs: it holds theirs already
        self.deferred: list[str] = []  # sets to give back once the hand-over is read (it answers after)

    def open(self) -> None:
        self.house.anchor = self
        if self.sock is not None:
            self.sock.settimeout(LINK_SECONDS)
            self.house.pump.listen(self.sock.fileno(), self._read)

    # -- the house's hooks -----------------------------------------------------------------
    def wrap(self, member: Member, seams: Seams) -> None:
        """Each start of `member`'s daemon hands the anchor its new set."""
        spawn = seams.spawn

        def spawn_held(*args: Any, **kwargs: Any) -> Any:
            child = spawn(*args, **kwargs)
            self._hold(member, child.pid, child.stdout, child.stderr)
            return child
        seams.spawn = spawn_held

    def taken(self, member: Member) -> None:
        if not self.handing:
            self._hold(member, None, None, None)

    def left(self, member: Member) -> None:
        """The job leaves: the anchor lets its descriptors go, and says so, before we do."""
        if self.sock is None or member.name not in self.holding:
            return
        self.holding.discard(member.name)
        self._drop(member.name)

    def _hold(self, member: Member, pid: Optional[int], out: Optional[int], err: Optional[int]) -> None:
        if self.sock is None or member.sup.job.periodic:
            return
        lock = lock_fds(member.sup.lock)
        pipes = (out, err) if out is not None and err is not None else ()
        try:
            self.send(self.sock, {"op": "hold", "name": member.name, "pid": pid, "lock": len(lock),
                                  "pipes": len(pipes)}, lock + pipes)
        except OSError:
            self._lost()
            return
        self.holding.add(member.name)

    def _drop(self, name: str) -> None:
        assert self.sock is not None
        try:
            self.send(self.sock, {"op": "drop", "name": name})
            while True:
                message, fds = self.receive(self.sock)
                close_all(fds)
                if message is None:
                    break
                if message.get("dropped") == name:
                    return
                self._exit(message)
        except (OSError, ValueError, EOFError, TypeError):
            pass
        self._lost()

    # -- what the anchor says --------------------------------------------------------------
    def _read(self) -> None:
        if self.sock is None:
            return
        try:
            message, fds = self.receive(self.sock)
        except (OSError, ValueError, EOFError, TypeError):
            message, fds = None, []
        close_all(fds)
        if message is None:
            self._lost()
        else:
            self._exit(message)

    def _exit(self, message: dict[str, Any]) -> None:
        """An adopted daemon's end, reaped by the anchor: to its job, as our own reap would."""
        pid, code = message.get("pid"), message.get("code")
        if message.get("op") != "exit" or not isinstance(pid, int) or not isinstance(code, int):
            return
        for member in self.house.members.values():
            if member.sup.life.child.pid == pid:
                member.inbox.append((pid, code))

    def _lost(self) -> None:
        """EOF, or no answer: said once in each job's log; the resident runs on without an anchor."""
        sock, self.sock = self.sock, None
        if sock is None:
            return
        self.holding.clear()
        try:
            self.house.pump.unlisten(sock.fileno())
        except (OSError, ValueError, KeyError):
            pass
        sock.close()
        self.house.failures.append(LOST)
        for member in list(self.house.members.values()):
            child = member.sup.life.child
            if child.adopted and child.pid is not None:  # its end came from the anchor: a pidfd now
                try:
                    watch_member(self.house, member, child.pid, member.sup.state.pid_start)
                except Exception as exc:
                    self.house.failures.append(f"{member.name}: could not watch its daemon: {exc}")
            try:
                member.sup.output.note(LOST)
            except Exception:
                pass

    # -- a resident the anchor started ------------------------------------------------------
    def take_handed(self, root: str) -> list[str]:
        """Adopt every job the anchor hands over (until its `end`); the names adopted."""
        adopted: list[str] = []
        self.handing = True
        try:
            while self.sock is not None:
                try:
                    message, fds = self.receive(self.sock)
                except (OSError, ValueError, EOFError, TypeError):
                    self._lost()
                    break
                if message is None:
                    self._lost()
                    break
                if message.get("op") == "end":
                    break
                if message.get("op") != "job":
                    close_all(fds)
                    self._exit(message)
                    continue
                name = str(message.get("name", ""))
                try:
                    if self._adopt(root, name, message, fds):
                        adopted.append(name)
                except Exception as exc:  # that job's set goes back; the others are adopted
                    self.house.failures.append(f"{name}: could not adopt it from the anchor: {exc}")
                    if name not in self.house.members:
                        self.deferred.append(name)
        finally:
            self.handing = False
        for name in self.deferred:
            if self.sock is not None:
                self._drop(name)
        self.deferred = []
        return adopted

    def _adopt(self, root: str, name: str, message: dict[str, Any], fds: list[int]) -> bool:
        house, seams = self.house, self.house.seams
        held, piped = message.get("lock"), message.get("pipes")
        job, state = seams.load_job(root, name), house.store.load(name)
        if held != 2 or piped not in (0, 2) or len(fds) != 2 + int(piped) or job is None or state is None \
                or not job.shared or job.periodic or name in house.members:
            close_all(fds)  # uninstalled, or not ours to adopt this way: a tick's adoption is left
            self.deferred.append(name)
            return False
        lock, pipes = self.make_lock(job, fds[:2]), fds[2:]
        pid, code = message.get("pid"), message.get("code")
        self.holding.add(name)
        history = {key: getattr(state, key) for key in CARRIED}
        if not isinstance(pid, int):  # its daemon ended under the dead resident: started again, as a tick would
            close_all(pipes)
            house.take(job, lock, history=history)
            return name in house.members
        house.take(job, lock, history=history)
        member = house.members.get(name)
        if member is None:
            close_all(pipes)
            return False
        self._running(member, state, pid, pipes)
        if isinstance(code, int):
            member.inbox.append((pid, code))  # it ended between the two residents: its status is known
        return True

    def _running(self, member: Member, state: Any, pid: int, pipes: list[int]) -> None:
        sup = member.sup
        # Not our child: the old tree's leftovers are the anchor's, so they are looked for in /proc.
        start = state.pid_start if state.pid == pid else self.house.seams.start_time(pid)
        running(sup, state, pid, start,
                message=f"adopted from a shared supervisor that died (pid {state.supervisor_pid}), through its anchor",
                note=(f"adopted running pid {pid} from its anchor: its shared supervisor "
                      f"(pid {state.supervisor_pid}) died; its output and exit status are kept"))
        out, err = sup.output.out, sup.output.err
        if len(pipes) == 2 and out is not None and err is not None:
            sup.pump.watch(pipes[0], out)
            sup.pump.watch(pipes[1], err)
        else:
            close_all(pipes)

