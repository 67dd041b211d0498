"""Start a command in a session of its own, its output on pipes: fork and exec, no subprocess.

subprocess would cost the resident supervisor about 2 MiB of imports (threading, signal's
enum, selectors); the child side here is what supervisord does, a few system calls before
exec. A failed exec is reported through a close-on-exec pipe, the way subprocess does it.
"""

from __future__ import annotations

import errno
import fcntl
import os

from ..errors import CANNOT_EXECUTE, NOT_FOUND
from ..files import read_to_end

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing stays out of the resident supervisor's memory; annotations are strings
    from typing import Optional

PIPE_SIZE = 1024 * 1024
# The soft open-file limit of every child, once this process raised its own (the shared resident:
# fdlimit.py): its daemons and its failure notifiers alike get the limit it was started with.
children_nofile: Optional[int] = None
MAX_FD = 65536  # closerange's upper bound (close_range(2) makes it cheap where the kernel has it)


class SpawnError(Exception):
    """The command could not be started; `code` is what a shell would exit with (127, 126)."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


class Spawned:
    __slots__ = ("pid", "stdout", "stderr")

    def __init__(self, pid: int, stdout: Optional[int], stderr: Optional[int]) -> None:
        self.pid = pid
        self.stdout = stdout  # read ends (non-blocking), None when output is passed through
        self.stderr = stderr


def output_pipe() -> tuple[int, int]:
    r, w = os.pipe2(os.O_CLOEXEC)
    try:
        fcntl.fcntl(w, 1031, PIPE_SIZE)  # F_SETPIPE_SZ: room for bursts while we write
    except OSError:
        pass
    os.set_blocking(r, False)
    return r, w


def close_all_but(keep: tuple[int, ...]) -> None:
    """Close every descriptor above 2 except `keep`: descriptors inherited from whoever started
    us (another job's lock, a terminal's pipes) must not reach the daemon."""
    low = 3
    for fd in sorted(set(k for k in keep if k >= 3)):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, MAX_FD)


def spawn(argv: list[str], cwd: str, env: dict[str, str], pass_fds: tuple[int, ...] = (),
          capture: bool = True, stdio: tuple[Optional[int], Optional[int], Optional[int]] = (None, None, None),
          nofile: Optional[int] = None) -> Spawned:
    """fork + exec `argv` in a new session, stdin from /dev/null; stdout and stderr on pipes
    (or inherited when not `capture`); `pass_fds` stay open in the child. `stdio` gives a
    descriptor for stdin, stdout or stderr instead (-1: /dev/null), for a helper process.
    `nofile`: the child's soft RLIMIT_NOFILE (by default `children_nofile`)."""
    nofile = children_nofile if nofile is None else nofile
    if nofile is not None:
        from .fdlimit import set_soft  # loaded here, before the fork: the child only calls it
    pipes = [output_pipe(), output_pipe()] if capture else []
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    given = [null if fd == -1 else fd for fd in stdio]
    program = os.fsencode(argv[0])
    args = [os.fsencode(a) for a in argv]
    envb = {os.fsencode(k): os.fsencode(v) for k, v in env.items()}
    pid = os.fork()
    if pid == 0:  # the child: system calls only, then exec
        stage = "setup"
        try:
            os.close(err_r)
            os.setsid()  # its own session: no terminal, one group to signal
            os.dup2(null if given[0] is None else given[0], 0)
            if pipes:
                os.dup2(pipes[0][1], 1)
                os.dup2(pipes[1][1], 2)
            for target in (1, 2):
                fd = given[target]
                if fd is not None and not pipes:
                    os.dup2(fd, target)
            close_all_but(tuple(pass_fds) + (err_w,))  # err_w closes itself at exec
            for fd in pass_fds:
                os.set_inheritable(fd, True)
            if nofile is not None:
                set_soft(nofile)  # what the resident was started with, not its raised limit
            stage = "chdir"
            os.chdir(cwd)
            stage = "exec"
            os.execve(program, args, envb)
        except BaseException as exc:
            number = exc.errno if isinstance(exc, OSError) and exc.errno else errno.EINVAL
            try:
                os.write(err_w, f"{stage}:{number}".encode())
            finally:
                os._exit(NOT_FOUND)
    os.close(err_w)
    os.close(null)
    for _, w in pipes:
        os.close(w)
    report = read_to_end(err_r)  # EOF at the child's exec (close-on-exec) or exit
    if report:
        os.waitpid(pid, 0)
        for r, _ in pipes:
            os.close(r)
        stage, _, number_text = report.decode().partition(":")
        number = int(number_text)
        if stage == "chdir":
            raise SpawnError(f"cannot enter working directory {cwd}: {os.strerror(number)}", CANNOT_EXECUTE)
        code = NOT_FOUND if number == errno.ENOENT else CANNOT_EXECUTE
        if number in (errno.EMFILE, errno.ENFILE):  # ours or the child's before exec, not the program's
            from .fdlimit import said

            raise SpawnError(f"cannot start {argv[0]}: the supervisor is {said(number)}", code)
        raise SpawnError(f"cannot start {argv[0]}: {os.strerror(number)}", code)
    return Spawned(pid, pipes[0][0] if pipes else None, pipes[1][0] if pipes else None)
