"""The shared resident's socket (install --shared): where it is, who may talk to it, and how.

One AF_UNIX stream socket per user, host, state root and kind (plain, or cluster jobs:
`house_name`), `.house.sock` in the user's private
0700 lock folder, beside `.house.lock`, the flock its resident holds for its whole life (no job
name starts with '.', so neither can be a job's). Only peers of our own uid are heard (SO_PEERCRED,
on both ends): another local user is an adversary, and the folder's mode is not the only wall.

A message is a length and a marshalled dict; descriptors (a job's held lock) ride on its first
bytes as SCM_RIGHTS. marshal is built in: reading it loads nothing into the resident. Requests:

    {"op": "take", "job": Job.to_dict(), "history": {...}} + [lock fd, folder fd]
        -> {"taken": PID}, then {"ready": "ok PID" | a problem} once the daemon runs its settle time;
           or {"refused": WHY} when it has no descriptors left for one more job (proc/fdlimit.py):
           nothing was taken, and the tick runs NAME under a supervisor of its own
    {"op": "stop", "name": NAME}   -> {"stopped": True | False}  once its tree is gone
    {"op": "reload", "name": NAME} -> {"reloaded": True | False}
    {"op": "ping"}                 -> {"pid": PID, "jobs": [NAME, ...]}

Standard library only, and `_socket`, not `socket`: the latter loads enum into the resident.
"""

from __future__ import annotations

import _socket
import marshal
import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing stays out of the resident supervisor's memory; annotations are strings
    from typing import Any, Optional

HOUSE = ".house"  # the resident's lock: .house-ROOT.lock (FlockLock adds the suffix)
MAX_FDS = 4
MAX_MESSAGE = 64 * 1024 * 1024  # a job's command and environment are bounded by exec's limit far below
_HEADER = 4
_MSG_CMSG_CLOEXEC = getattr(_socket, "MSG_CMSG_CLOEXEC", 0x40000000)


class WireError(OSError):
    """The other end is gone, not ours, or said something we cannot read."""


CLUSTER = "-cluster"  # the cluster house's suffix: shared cluster jobs have a resident of their own


def house_name(root: str, cluster: bool = False) -> str:
    """The resident's name in the lock folder, one per state root: a folder named by
    WATCHDOG_SINGLETON_LOCK_DIR may serve several roots, and a resident runs the jobs of its own.
    Shared cluster jobs go to a resident of their own (supervisor/housecluster.py), which loads
    the database driver and has a watcher above it: a user without them pays for neither."""
    import zlib

    return f"{HOUSE}-{zlib.crc32(os.path.abspath(root).encode()):08x}{CLUSTER if cluster else ''}"


def socket_path(lock_dir: str, root: str, cluster: bool = False) -> str:
    return os.path.join(lock_dir, house_name(root, cluster) + ".sock")


def pid_path(lock_dir: str, root: str) -> str:
    """`PID START` of the live resident: the crontab line of a shared job reads it with shell
    builtins, so a held lock costs no Python while the resident lives (cron/crontab.py)."""
    return os.path.join(lock_dir, house_name(root) + ".pid")


def peer_uid(sock: _socket.socket) -> int:
    """The uid of the process at the other end (SO_PEERCRED: pid, uid, gid as C ints)."""
    raw = sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, 12)
    return int.from_bytes(raw[4:8], sys.byteorder)


def connect(path: str, timeout: float) -> _socket.socket:
    """A connection to the resident at `path`, checked to be our own user's; OSError if none answers."""
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(path)
        if peer_uid(sock) != os.getuid():
            raise WireError(f"{path} is served by another user: not talking to it")
    except BaseException:
        sock.close()
        raise
    return sock


def send(sock: _socket.socket, message: dict[str, Any], fds: tuple[int, ...] = ()) -> None:
    data = marshal.dumps(message)
    data = len(data).to_bytes(_HEADER, "little") + data
    extra = [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS,
              b"".join(fd.to_bytes(4, sys.byteorder, signed=True) for fd in fds))] if fds else []
    sent = sock.sendmsg([data], extra)  # the descriptors go with the first bytes, whatever follows
    if sent < len(data):
        sock.sendall(data[sent:])


def receive(sock: _socket.socket) -> tuple[Optional[dict[str, Any]], list[int]]:
    """One message and the descriptors that came with it; (None, []) at EOF before any byte. Reads
    exactly one message: the next one (a `ready` right behind `taken`) stays in the socket."""
    space = _socket.CMSG_SPACE(MAX_FDS * 4)
    data, ancillary, flags, _ = sock.recvmsg(_HEADER, space, _MSG_CMSG_CLOEXEC)
    fds: list[int] = []
    for level, kind, raw in ancillary:
        if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
            usable = len(raw) - len(raw) % 4
            fds += [int.from_bytes(raw[i:i + 4], sys.byteorder, signed=True) for i in range(0, usable, 4)]
    try:
        if not data:
            return None, fds
        if flags & _socket.MSG_CTRUNC:
            raise WireError("more descriptors than a message may carry")
        while len(data) < _HEADER:
            data += _recv_some(sock, _HEADER - len(data))
        size = int.from_bytes(data, "little")
        if size > MAX_MESSAGE:
            raise WireError(f"a message of {size} bytes")
        chunks: list[bytes] = []
        have = 0
        while have < size:
            chunk = _recv_some(sock, size - have)
            chunks.append(chunk)
            have += len(chunk)
        message = marshal.loads(b"".join(chunks))
        if not isinstance(message, dict):
            raise WireError("a message that is no table")
        return message, fds
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise


def _recv_some(sock: _socket.socket, most: int = 65536) -> bytes:
    chunk: bytes = sock.recv(min(most, 1024 * 1024))
    if not chunk:
        raise WireError("the other end closed the connection in the middle of a message")
    return chunk


def ask(path: str, message: dict[str, Any], timeout: float) -> Optional[dict[str, Any]]:
    """Send one request, return the one answer (None: the resident closed without one)."""
    sock = connect(path, timeout)
    try:
        send(sock, message)
        answer, fds = receive(sock)
        for fd in fds:
            os.close(fd)
        return answer
    finally:
        sock.close()
