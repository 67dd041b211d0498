"""The shared resident's entry point and its door (the socket), exec'd by the cron tick of a shared
job that found no shared resident and took `.house.lock`:

    python -I -S -c HOUSE_BOOT PACKAGE_PARENT --state-dir ROOT JOB_FD

JOB_FD is a memfd, as for a resident of its own (resident.py): the first job, its lock's and the
house lock's descriptors, where to report readiness (and the cluster house's beat pipe to its
watcher: housecluster.py). The resident binds `.house.sock` beside the
house lock (only the holder of that lock ever binds or unlinks it) and takes the jobs that other
ticks hand over there (housewire.py); it exits when no job is left. Its parent is its anchor
(anchor.py), linked by the socketpair named in the hand-over (`anchor_fd`); a resident the anchor
started (`from_anchor`) first adopts the jobs the anchor hands it (anchorlink.py).
"""

from __future__ import annotations

import _socket
import marshal
import os

from ..errors import FAILED
from ..files import read_to_end
from ..job.model import Job
from ..lock.flock import REPAIRED, FlockLock
from ..proc import procs
from ..proc import spawn as spawning
from ..proc.fdlimit import out_of, raise_soft
from ..state.store import StateStore
from .adopt import adopt_orphans
from .anchorlink import AnchorLink
from .house import House
from .housewire import WireError, house_name, peer_uid, receive, send, socket_path
from .resident import RESIDENT_MALLOC, ready_text
from .seams import Seams

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing stays out of the resident supervisor's memory; annotations are strings
    from typing import Any, Optional

    from .core import Supervisor

READ_TIMEOUT = 2.0  # a peer of ours that connects and says nothing holds the loop this long at most


class Door:
    """The listening socket: accepts our own user only, reads one request per connection, and
    queues it for the loop (requests are acted on between turns, never inside a job's stop)."""

    def __init__(self, house: House, path: str, house_lock: FlockLock) -> None:
        self.house = house
        self.path = path
        self.house_lock = house_lock
        self.pid_file = path[:-len(".sock")] + ".pid"  # housewire.pid_path: the crontab line reads it
        self.open: set[_socket.socket] = set()
        self.sock: Optional[_socket.socket] = None
        self.ino: Optional[int] = None
        self.pid_ino: Optional[int] = None
        self.pid_fd: Optional[int] = None  # ours on the pid file, named in it (the crontab line's test)
        self.look()  # binds and writes the pid file only in the folder of the house lock we hold
        house.looks.append(self.look)

    def _bind(self) -> tuple[_socket.socket, int]:
        try:
            os.unlink(self.path)  # a dead resident's: we hold the house lock, so nobody else binds here
        except FileNotFoundError:
            pass
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            sock.bind(self.path)
        finally:
            os.umask(old)
        sock.listen(128)
        sock.setblocking(False)
        self.house.pump.listen(sock.fileno(), self._accept)
        return sock, os.stat(self.path).st_ino

    def look(self) -> None:
        """With the jobs' lock watch: a /tmp cleaner that deleted the house lock or the socket
        has them put back (as each job's lock is), so the next tick still finds us. Nothing is
        made in a folder that is not the house lock's, ours: one another user made at that name
        after a cleaner (the anchor starts us on the old folder's name) is left alone."""
        if not self.house_lock.still_ours() and self.house_lock.repair() != REPAIRED:
            return  # another resident holds the path now (or the folder cannot be had): it serves there
        self.house_lock.refresh()
        if self.pid_ino is None or file_ino(self.pid_file) != self.pid_ino:
            self.pid_ino, self.pid_fd = write_pid_file(self.pid_file, self.pid_fd)
        here = file_ino(self.path)
        if self.sock is not None and here == self.ino:
            return
        old = self.sock
        self.sock, self.ino = self._bind()
        if old is not None:
            self.house.pump.unlisten(old.fileno())
            old.close()

    def close(self) -> None:
        if self.sock is not None:
            self.house.pump.unlisten(self.sock.fileno())
        for path, ino in ((self.path, self.ino), (self.pid_file, self.pid_ino)):
            try:
                if ino is not None and file_ino(path) == ino:
                    os.unlink(path)
            except OSError:
                pass
        if self.pid_fd is not None:
            os.close(self.pid_fd)
            self.pid_fd = None
        if self.sock is not None:
            self.sock.close()
        for conn in list(self.open):
            self._hang_up(conn)

    def _accept(self) -> None:
        while self.sock is not None:
            try:
                fd, _ = self.sock._accept()  # type: ignore[attr-defined]  # _socket's accept: no socket.py
            except OSError:  # BlockingIOError: none left; anything else: the next poll tries again
                return
            conn = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM, 0, fd)
            try:
                ours = peer_uid(conn) == os.getuid()
            except OSError:
                ours = False
            if not ours:  # another local user: not a word, not a byte read
                conn.close()
                continue
            conn.settimeout(READ_TIMEOUT)
            self.open.add(conn)
            self.house.pump.listen(conn.fileno(), lambda conn=conn: self._read(conn))  # type: ignore[misc]

    def _read(self, conn: _socket.socket) -> None:
        self.house.pump.unlisten(conn.fileno())
        try:
            message, fds = receive(conn)
        except (OSError, ValueError, EOFError, TypeError):
            self._hang_up(conn)
            return
        if message is None:
            self._hang_up(conn)
            return
        self.house.requests.append(lambda: self._handle(conn, message, fds))

    def _handle(self, conn: _socket.socket, message: dict[str, Any], fds: list[int]) -> None:
        op = message.get("op")
        if op == "take" and len(fds) == 2:
            self._take(conn, message, fds)
            return
        for fd in fds:
            os.close(fd)
        name = str(message.get("name", ""))
        if op == "stop":
            self.house.stop_job(name, lambda stopped: self._answer(conn, {"stopped": stopped}))
        elif op == "reload":
            self._answer(conn, {"reloaded": self.house.reload_job(name)})
        elif op == "ping":
            self._answer(conn, {"pid": os.getpid(), "jobs": sorted(self.house.members)})
        else:
            self._hang_up(conn)

    def _take(self, conn: _socket.socket, message: dict[str, Any], fds: list[int]) -> None:
        refused = self.house.room()
        if refused is not None:  # before `taken`: the tick still holds NAME's lock and starts it itself
            for fd in fds:
                os.close(fd)  # our copies only: the lock stays the tick's
            self._answer(conn, {"refused": refused})
            return
        try:
            job = Job.from_dict(message["job"])
            lock = FlockLock(job.lock_dir, job.name)
            lock.fd, lock.dir_fd = fds
            if not lock.still_ours():
                raise WireError(f"the descriptor handed over is not {job.lock_path}")
        except Exception:
            for fd in fds:
                os.close(fd)
            self._hang_up(conn)  # not taken: the tick may try again
            return
        try:
            send(conn, {"taken": os.getpid()})  # from here on the tick waits; it never starts NAME itself
        except OSError:
            lock.release()
            self._hang_up(conn)
            return
        def ready(problem: Optional[str]) -> None:
            self._answer(conn, {"ready": ready_text(member_sup(self.house, job.name), problem)})

        try:
            self.house.take(job, lock, ready=ready, history=message.get("history") or {})
        except Exception as exc:
            ready(f"{job.name}: the shared supervisor could not take it: {out_of(exc) or exc}")

    def _answer(self, conn: _socket.socket, message: dict[str, Any]) -> None:
        try:
            send(conn, message)
        except OSError:
            pass  # whoever asked is gone
        self._hang_up(conn)

    def _hang_up(self, conn: _socket.socket) -> None:
        self.open.discard(conn)
        try:
            self.house.pump.unlisten(conn.fileno())
        except (OSError, ValueError):
            pass
        conn.close()


def file_ino(path: str) -> Optional[int]:
    try:
        return os.stat(path, follow_symlinks=False).st_ino
    except OSError:
        return None


def write_pid_file(path: str, old_fd: Optional[int]) -> tuple[Optional[int], Optional[int]]:
    """`PID START FD` into `path` (our private lock folder, beside the house lock only we hold), for
    the crontab line of a shared job: while that process lives, a held lock needs no Python. FD is
    our descriptor on the file, kept open (close-on-exec) for the line's cheap test
    (cron/crontab.py's pid_file_lives). A new file renamed over the old: a reader sees the old or
    the new, never half. Its inode and our descriptor on it (`old_fd` closed), or (None, old_fd)."""
    me = os.getpid()
    tmp = f"{path}.{me}.new"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, f"{me} {procs.start_time(me)} {fd}\n".encode())
            os.rename(tmp, path)
        except OSError:
            os.close(fd)
            raise
    except OSError:
        return None, old_fd  # the next look tries again; meanwhile a held lock's tick runs Python and finds us
    if old_fd is not None:
        os.close(old_fd)
    return file_ino(path), fd


def member_sup(house: House, name: str) -> Optional[Supervisor]:
    """The supervisor of job `name` in `house` (it reports its start from inside `take`, so it is
    looked up when it does): a periodic job's start is its supervisor waiting, not the resident."""
    member = house.members.get(name)
    return member.sup if member is not None else None


def main(argv: list[str]) -> int:
    _, root, job_fd = argv
    for key in RESIDENT_MALLOC:  # ours, read by glibc at our start; not the daemons'
        os.environ.pop(key, None)
    hand_over = marshal.loads(read_to_end(int(job_fd)))
    # Room for a few descriptors a job, as systemd gives itself; each daemon gets back the soft limit
    # the tick (or the anchor, for the residents it starts) was started with.
    started_with = raise_soft()
    nofile = hand_over.get("nofile") or started_with
    # No first job: a tick found its job's daemon running on after its resident died (adopt.py).
    job = Job.from_dict(hand_over["job"]) if hand_over["job"] is not None else None
    cluster = job is not None and bool(job.cluster)  # the cluster house: its first job is a cluster job
    house_lock = FlockLock(hand_over["house_dir"], house_name(root, cluster))
    house_lock.fd, house_lock.dir_fd = hand_over["house_fd"], hand_over["house_dir_fd"]
    lock = FlockLock(job.lock_dir, job.name) if job is not None else None
    if lock is not None:
        lock.fd, lock.dir_fd = hand_over["lock_fd"], hand_over["dir_fd"]
    ready_fd = hand_over["ready_fd"]
    anchor_fd = hand_over.get("anchor_fd", -1)  # the socketpair to the anchor above us (anchor.py)
    for fd in (*house_lock.inheritable_fds(), *(lock.inheritable_fds() if lock else ()), ready_fd, anchor_fd):
        if fd >= 0:
            os.set_inheritable(fd, False)  # each daemon gets its own lock through spawn's pass_fds, nothing else
    holder: list[House] = []  # once made: the job's supervisor is found in it when it reports

    def ready(problem: Optional[str]) -> None:
        nonlocal ready_fd
        if ready_fd < 0:
            return
        sup = member_sup(holder[0], job.name) if holder and job is not None else None
        try:
            os.write(ready_fd, ready_text(sup, problem).encode())
            os.close(ready_fd)
        except OSError:
            pass
        ready_fd = -1

    path = socket_path(hand_over["house_dir"], root, cluster)

    spawning.children_nofile = nofile  # daemons and notifiers: never our raised limit
    seams = Seams()
    house = House(StateStore(root), seams=seams, socket_path=path)
    holder.append(house)
    beat_fd = hand_over.get("beat_fd", -1)  # the cluster house's: to its watcher, our parent
    if cluster:
        from ..cluster.watcher import beat
        from .housecluster import ClusterDuty

        os.set_inheritable(beat_fd, False)  # the watcher's EOF is our death, never a daemon's
        house.duty = ClusterDuty(house.members, send=lambda deadline, grace: beat(beat_fd, deadline, grace))
    door: Optional[Door] = None
    what = job.name if job is not None else "adopting"
    try:
        house.open()
        door = Door(house, path, house_lock)
        if anchor_fd >= 0:
            link = AnchorLink(house, _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM, 0, anchor_fd))
            link.open()
            if hand_over.get("from_anchor"):
                link.take_handed(root)  # the jobs of the resident before us, with their pipes and locks
        if not cluster:  # a cluster house's watcher stops every tree a dead one left: none to adopt
            adopt_orphans(house, root)  # the daemons a resident before us left running, ours again
        if job is not None and lock is not None:
            house.take(job, lock, ready=ready, history=hand_over["history"])
        else:
            ready(None)
        return house.run()
    except Exception as exc:
        ready(f"{what}: the shared supervisor could not run: {out_of(exc) or exc or exc.__class__.__name__}")
        return FAILED
    finally:
        if door is not None:
            door.close()
        house_lock.release()
