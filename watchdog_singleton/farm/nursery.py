"""The farm's nursery: the one process that starts the farm's tasks, and takes them with it.

The farm asks over a socket (`spawn`), the nursery forks and execs the task and reports its
exit; the farm stays free of task children. Two modes:

- **ns** (where unprivileged user namespaces work): the nursery is PID 1 of a PID namespace of
  its own (in a user namespace that maps the user to itself, so getuid is unchanged, and a
  mount namespace with its own /proc, so `$$` and /proc agree inside a task). When PID 1 dies
  the kernel SIGKILLs every process in the namespace: `setsid`, double forks and `env -i` cannot
  leave it. The nursery dies with the farm, however the farm dies: PR_SET_PDEATHSIG=SIGKILL on
  it (and on its outer half, the process that made the namespace), and EOF on the socket.
- **plain** (no namespaces): the nursery is a subreaper with PR_SET_PDEATHSIG=SIGKILL, and
  each task's first process gets PR_SET_PDEATHSIG=SIGKILL bound to the nursery. What a task
  forked is left to the farm's watcher (reaper.py, by the marker in the environment) and to the
  next farm's sweep; a descendant that cleared its environment can escape those two.

Either way the nursery holds the farm's renew deadline (CLOCK_BOOTTIME, sent after each
successful heartbeat): past it, the farm may have lost its leases (paused, or its database
unreachable), so the nursery SIGKILLs every task before another farm can take them over. It
does this on its own, so a farm that is stopped (SIGSTOP, a swap storm) cannot overrun it.

Messages are marshal'd tuples on a SOCK_SEQPACKET pair (one message each):
    farm -> nursery: ("env", base), once; ("spawn", seq, argv, env, cwd) + the log fd, env being
                     what a task's environment adds to the base; ("renew", deadline)
    nursery -> farm: ("hello", mode, pid); ("started", seq, pid); ("failed", seq, code, why);
                     ("exit", seq, code); ("lapsed",)
The hello's pid is the nursery's as the farm sees it; a task's pid is as the nursery sees it
(Client.outer translates, when a stop needs it). Standard library only.
"""

from __future__ import annotations

import array
import ctypes
import errno
import marshal
import os
import select
import signal
import socket
import sys
import time

from ..errors import CANNOT_EXECUTE, FAILED, KILLED, NO_NAMESPACE, NOT_FOUND
from ..proc.children import Wakeups, end_child, wait_child
from ..proc.procs import reap_exited

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs the nursery's start more than all the rest it imports
    from typing import Any, Optional

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWPID = 0x00020000, 0x10000000, 0x20000000
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REC, MS_PRIVATE = 2, 4, 8, 0x4000, 0x40000
MAX_MESSAGE = 1 << 20
RESET_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGQUIT,
                 signal.SIGPIPE, signal.SIGXFSZ)
MAX_WAIT = 1.0  # wake at least this often, so a deadline passed during a pause is seen at once


# The helpers' Python (the nursery, the watcher): isolated, without site (-I -S), with our package
# found where the farm found it. The module's name stays in the command line (pkill -f finds it).
BOOT = "import sys; sys.path.append(sys.argv[1]); from {module} import main; sys.exit(main(sys.argv[2:]))"


def helper_argv(module: str, *args: str) -> list[str]:
    """`python -m MODULE ARGS` at about two thirds of the cost: no site, no .pth files, no user paths."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return [sys.executable, "-I", "-S", "-c", BOOT.format(module=module), os.path.dirname(package), *args]


def boottime() -> float:
    try:
        return time.clock_gettime(time.CLOCK_BOOTTIME)
    except (AttributeError, OSError):
        return time.monotonic()


def send(sock: socket.socket, message: tuple[Any, ...], fds: tuple[int, ...] = ()) -> None:
    data = marshal.dumps(message)
    if fds:
        sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
    else:
        sock.send(data)


def receive(sock: socket.socket) -> tuple[Optional[tuple[Any, ...]], list[int]]:
    """One message and the descriptors that came with it; (None, []) at EOF."""
    data, ancillary, _, _ = sock.recvmsg(MAX_MESSAGE, socket.CMSG_SPACE(4 * 4), socket.MSG_CMSG_CLOEXEC)
    fds: list[int] = []
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            got = array.array("i")
            got.frombytes(payload[:len(payload) - len(payload) % got.itemsize])
            fds.extend(got)
    if not data:
        return None, fds
    message = marshal.loads(data)
    return (message if isinstance(message, tuple) else None), fds


class Libc:
    def __init__(self) -> None:
        self.libc = ctypes.CDLL(None, use_errno=True)

    def check(self, result: int, what: str) -> None:
        if result != 0:
            number = ctypes.get_errno()
            raise OSError(number, f"{what}: {os.strerror(number)}")

    def prctl(self, option: int, value: int) -> None:
        self.check(self.libc.prctl(option, value, 0, 0, 0), "prctl")

    def unshare(self, flags: int) -> None:
        self.check(self.libc.unshare(flags), "unshare")

    def mount(self, source: Optional[str], target: str, kind: Optional[str], flags: int) -> None:
        def encode(text: Optional[str]) -> Optional[bytes]:
            return text.encode() if text is not None else None
        self.check(self.libc.mount(encode(source), encode(target), encode(kind), ctypes.c_ulong(flags), None),
                   f"mount {target}")


def find_program(name: str, env: dict[str, str]) -> str:
    """`name` as execvpe would find it in env's PATH: the first executable file; PermissionError
    when only files we may not run are found (exit 126), FileNotFoundError when none (127)."""
    if "/" in name:
        return name
    denied = False
    for folder in env.get("PATH", os.defpath).split(os.pathsep):
        path = os.path.join(folder or ".", name)
        if os.path.isfile(path):
            if os.access(path, os.X_OK):
                return path
            denied = True
    if denied:
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), name)
    raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), name)


def write_file(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


class Nursery:
    def __init__(self, sock: socket.socket, libc: Libc, mode: str, marker: str,
                 outer_proc: Optional[int]) -> None:
        self.sock = sock
        self.libc = libc
        self.mode = mode
        self.marker = marker
        self.outer_proc = outer_proc  # /proc of the farm's PID namespace: our tasks' pids as it sees them
        self.me = os.getpid()
        self.tasks: dict[int, int] = {}  # our pid of a task's first process -> the farm's seq
        self.ignore: set[int] = set()  # children whose start failed: reported already
        self.deadline: Optional[float] = None
        self.null = os.open(os.devnull, os.O_RDONLY)
        self.env: dict[str, str] = {}  # every task's, sent once (not once a task): a spawn sends what it adds

    def serve(self) -> int:
        wakeups = Wakeups(())  # SIGCHLD alone: a task's exit ends the wait
        wake_r = wakeups.open()
        outer = int(os.readlink("self", dir_fd=self.outer_proc)) if self.outer_proc is not None else self.me
        send(self.sock, ("hello", self.mode, outer))
        while True:
            # The deadline first: after a pause, nothing may go on before the tasks are stopped.
            if self.deadline is not None and boottime() >= self.deadline:
                self.deadline = None
                self.kill_all()
                send(self.sock, ("lapsed",))
            self.reap()
            timeout = MAX_WAIT if self.deadline is None else max(0.0, min(MAX_WAIT, self.deadline - boottime()))
            try:
                ready, _, _ = select.select([self.sock.fileno(), wake_r], [], [], timeout)
            except InterruptedError:
                continue
            if wake_r in ready:
                wakeups.drain()
            if self.sock.fileno() in ready:
                try:
                    message, fds = receive(self.sock)
                except OSError:
                    message, fds = None, []
                if message is None:
                    break  # the farm is gone, or done
                self.handle(message, fds)
        self.kill_all()  # the farm stopped what it wanted stopped gently; the rest goes now
        self.reap()
        return 0

    def handle(self, message: tuple[Any, ...], fds: list[int]) -> None:
        try:
            if message[0] == "renew":
                self.deadline = float(message[1])
            elif message[0] == "env":
                self.env = dict(message[1])
            elif message[0] == "spawn":
                _, seq, argv, env, cwd = message
                self.spawn(seq, argv, {**self.env, **env}, cwd, fds[0] if fds else self.null)
        finally:
            for fd in fds:
                os.close(fd)

    def spawn(self, seq: int, argv: list[str], env: dict[str, str], cwd: str, log: int) -> None:
        import subprocess

        try:
            if self.mode == "ns":
                pid = self.posix_spawn(argv, env, cwd, log)
            else:  # the task's first process is bound to us before its exec: Popen's preexec_fn
                proc = subprocess.Popen(argv, stdin=self.null, stdout=log, stderr=log, cwd=cwd, env=env,
                                        start_new_session=True, close_fds=True, preexec_fn=self.bind)
                proc.returncode = 0  # we reap it ourselves (waitpid -1); Popen must not look for it again
                pid = proc.pid
        except OSError as exc:
            where = f"cannot enter {cwd}" if exc.filename == cwd else f"cannot start {argv[0]}"
            code = NOT_FOUND if isinstance(exc, FileNotFoundError) and exc.filename != cwd else CANNOT_EXECUTE
            self.failed(seq, code, f"{where}: {exc.strerror}", log)
            return
        except subprocess.SubprocessError as exc:
            self.failed(seq, CANNOT_EXECUTE, f"cannot start {argv[0]}: {exc}", log)
            return
        self.tasks[pid] = seq
        send(self.sock, ("started", seq, pid))

    def posix_spawn(self, argv: list[str], env: dict[str, str], cwd: str, log: int) -> int:
        """In a namespace nothing runs in the child but the exec: posix_spawn (vfork, and the
        environment encoded, in C) costs about half of Popen. Popen's semantics otherwise: the
        program looked up in the task's PATH, a session of its own, signals we ignore or catch
        back to their defaults; every descriptor of ours is close-on-exec (see main)."""
        os.chdir(cwd)  # we are single-threaded; an error names cwd, as Popen's does
        try:
            return os.posix_spawn(find_program(argv[0], env), argv, env, setsid=True, setsigdef=RESET_SIGNALS,
                                  file_actions=[(os.POSIX_SPAWN_DUP2, self.null, 0), (os.POSIX_SPAWN_DUP2, log, 1),
                                                (os.POSIX_SPAWN_DUP2, log, 2)])
        finally:
            os.chdir("/")

    def failed(self, seq: int, code: int, why: str, log: int) -> None:
        """Say why in the task's log (the farm has moved on) and to the farm."""
        if log != self.null:
            try:
                os.write(log, f"# farm: cannot start it: {why}\n".encode(errors="surrogateescape"))
            except OSError:
                pass
        send(self.sock, ("failed", seq, code, why))

    def bind(self) -> None:
        self.libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != self.me:
            os._exit(KILLED)  # the nursery died before the task could be bound to it

    def reap(self) -> None:
        for pid, code in reap_exited():
            self.ignore.discard(pid)
            seq = self.tasks.pop(pid, None)
            if seq is not None:
                send(self.sock, ("exit", seq, code))

    def kill_all(self) -> None:
        if self.mode == "ns":
            try:
                os.kill(-1, signal.SIGKILL)  # as PID 1: every process of the namespace but us
            except ProcessLookupError:
                pass
            return
        for pid in self.tasks:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        from ..proc.stop import stop_job
        from ..proc.tree import Stopper

        stop_job(self.marker, 0.0, prefix=True, stopper=Stopper(reap=self.reap))


class Client:
    """The farm's side: start the nursery (a namespace if the host allows, plain otherwise),
    spawn tasks through it, send renew deadlines, and collect what it reports.

        nursery = Client(marker)
        nursery.launch()                      # optional: it boots while we do something else
        mode = nursery.start(base_env)        # "ns" or "plain"
        nursery.spawn(7, argv, {"TASK": "7"}, cwd, log_fd)   # base_env + this; raises SpawnFailed
                                              # if the nursery is gone
        for event in nursery.events(): ...    # ("started", 7, pid), ("failed", 7, 127, why),
                                              # ("exit", 7, 0), ("lapsed",)
    """

    def __init__(self, marker: str, namespaces: bool = True, hello_wait: float = 20.0) -> None:
        self.marker = marker
        self.namespaces = namespaces
        self.hello_wait = hello_wait
        self.sock: Optional[socket.socket] = None
        self.child = 0  # the process we started (in a namespace, its outer half)
        self.child_code: Optional[int] = None  # its exit code, once the farm's loop reaped it
        self.mode = ""
        self.pid = 0  # the nursery's, as we see it
        self.queue: list[tuple[Any, ...]] = []
        self.gone = False  # the nursery is dead: every task of it is too (ns) or orphaned (plain)
        self.booting: Optional[tuple[str, socket.socket]] = None  # launched, its hello not read yet

    def launch(self) -> None:
        """Start the nursery's interpreter, and return at once: the farm does its own start-up
        (the sweep of a dead farm's tasks) while the nursery boots; start() then waits for it."""
        if self.booting is None:
            mode = "ns" if self.namespaces else "plain"
            self.booting = (mode, self._launch(mode))

    def start(self, env: dict[str, str]) -> str:
        """Start the nursery (or finish what launch() began); `env` is every task's environment
        (a spawn sends what it adds)."""
        self.launch()
        assert self.booting is not None
        mode, ours = self.booting
        self.booting = None
        if not self._hello(ours) and (mode == "plain" or not self._hello(self._launch("plain"))):
            raise OSError(errno.ECHILD, "the farm's nursery process did not start")
        assert self.sock is not None
        try:
            send(self.sock, ("env", env))
        except OSError:
            self.gone = True
        return self.mode

    def _launch(self, mode: str) -> socket.socket:
        from ..proc import procs
        from ..proc.spawn import SpawnError, spawn

        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            argv = helper_argv("watchdog_singleton.farm.nursery", mode, str(os.getpid()), str(theirs.fileno()),
                               self.marker)
            self.child = spawn(argv, ".", procs.clean_environ(dict(os.environ)), pass_fds=(theirs.fileno(),),
                               capture=False, stdio=(-1, -1, None)).pid
            self.child_code = None
        except SpawnError as exc:
            ours.close()
            raise OSError(errno.ECHILD, f"the farm's nursery process did not start: {exc}") from None
        finally:
            theirs.close()
        return ours

    def _hello(self, ours: socket.socket) -> bool:
        deadline = time.monotonic() + self.hello_wait
        while True:
            left = deadline - time.monotonic()
            ready = select.select([ours], [], [], max(0.0, left))[0] if left > 0 else []
            message = receive(ours)[0] if ready else None
            if message is not None and message[0] == "hello":
                self.sock, self.mode, self.pid = ours, str(message[1]), int(message[2])
                return True
            if message is None:  # EOF (no namespace here) or no word in time
                ours.close()
                end_child(self.child)
                self.child = 0
                return False

    def fileno(self) -> int:
        assert self.sock is not None
        return self.sock.fileno()

    def _read(self, block: bool) -> bool:
        """One message into the queue; False when there was none (or the nursery is gone)."""
        assert self.sock is not None
        if self.gone:
            return False
        if not block and not select.select([self.sock], [], [], 0)[0]:
            return False
        try:
            message, fds = receive(self.sock)
        except OSError:
            message, fds = None, []
        for fd in fds:
            os.close(fd)
        if message is None:
            self.gone = True
            return False
        self.queue.append(message)
        return True

    def spawn(self, seq: int, argv: list[str], env: dict[str, str], cwd: str, log: int) -> None:
        """Ask for a task to be started with the base environment plus `env`, without waiting:
        ("started", seq, pid) or ("failed", seq, code, why) comes with events() (a shell's exit
        code; the nursery wrote why in the log).
        The farm goes on claiming and starting meanwhile, instead of one round trip per task.
        Raises SpawnFailed at once when the nursery is gone."""
        assert self.sock is not None
        if self.gone:
            raise SpawnFailed(CANNOT_EXECUTE, "the farm's nursery process is gone")
        try:
            send(self.sock, ("spawn", seq, argv, env, cwd), (log,))
        except OSError as exc:
            self.gone = True
            raise SpawnFailed(CANNOT_EXECUTE, f"the farm's nursery process is gone: {exc.strerror}") from None

    def wait_started(self, seq: int) -> Optional[tuple[Any, ...]]:
        """Block until the nursery answered the spawn of `seq`: its started or failed message,
        taken out of the queue; None when the nursery is gone (a stop needs the pid first)."""
        while True:
            for i, message in enumerate(self.queue):
                if message[0] in ("started", "failed") and message[1] == seq:
                    return self.queue.pop(i)
            if not self._read(block=True):
                return None

    def outer(self, pid: int) -> Optional[int]:
        """A task's pid as the farm sees it, from the pid the nursery reported (read only when a
        stop needs it: /proc of the nursery's children, whose NSpid ends in `pid`)."""
        if self.mode != "ns":
            return pid
        try:
            with open(f"/proc/{self.pid}/task/{self.pid}/children") as f:
                children = f.read().split()
        except OSError:
            return None
        for child in children:
            try:
                with open(f"/proc/{child}/status") as f:
                    for line in f:
                        if line.startswith("NSpid:"):
                            if line.split()[-1] == str(pid):
                                return int(child)
                            break
            except OSError:
                continue
        return None

    def renew(self, deadline: float) -> None:
        if self.sock is not None and not self.gone:
            try:
                send(self.sock, ("renew", deadline))
            except OSError:
                self.gone = True

    def events(self) -> list[tuple[Any, ...]]:
        while self._read(block=False):
            pass
        got, self.queue = self.queue, []
        return got

    def close(self) -> None:
        """The nursery kills what is left of the tasks (in a namespace) and exits."""
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        if self.child and self.child_code is None:
            wait_child(self.child, 10)

    def exited(self, pid: int, code: int) -> bool:
        """The farm's loop reaped `pid`: whether it was the nursery (its code is kept)."""
        if not self.child or pid != self.child:
            return False
        self.child_code = code
        return True


class SpawnFailed(Exception):
    def __init__(self, code: int, why: str) -> None:
        super().__init__(why)
        self.code = code


def ignore_signals() -> None:
    """The farm handles these; we go when it goes. Caught, not ignored: an exec resets a caught
    signal to its default, so the tasks get them as usual."""
    for sig in RESET_SIGNALS[:6]:
        signal.signal(sig, _ignore)


def _ignore(_signum: int, _frame: object) -> None:
    pass


def namespace(libc: Libc, sock: socket.socket, marker: str) -> int:
    """Become the outer half of a new PID namespace; its PID 1 serves. Returns an exit code."""
    outer_proc = os.open("/proc", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    uid, gid = os.geteuid(), os.getegid()
    try:
        # root keeps its powers: no user namespace for it (it may make PID namespaces as it is)
        libc.unshare(CLONE_NEWPID | CLONE_NEWNS | (CLONE_NEWUSER if uid != 0 else 0))
        if uid != 0:
            write_file("/proc/self/uid_map", f"{uid} {uid} 1\n")  # getuid inside is getuid outside
            write_file("/proc/self/setgroups", "deny")  # required before an unprivileged gid_map
            write_file("/proc/self/gid_map", f"{gid} {gid} 1\n")
    except OSError:
        return NO_NAMESPACE
    pid = os.fork()
    if pid == 0:
        code = FAILED
        try:
            # If the outer half died already, the farm did too: the socket's EOF ends us then.
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
            try:
                libc.mount(None, "/", None, MS_REC | MS_PRIVATE)  # our /proc mount stays ours
                libc.mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
            except OSError:
                os._exit(NO_NAMESPACE)
            code = Nursery(sock, libc, "ns", marker, outer_proc).serve()
        finally:
            os._exit(code)
    sock.close()
    os.close(outer_proc)
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            return os.waitstatus_to_exitcode(status)
        except InterruptedError:
            continue


def main(argv: list[str]) -> int:
    mode, farm_pid, fd, marker = argv[0], int(argv[1]), int(argv[2]), argv[3]
    ignore_signals()
    libc = Libc()
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != farm_pid:
        return FAILED  # the farm died before we were bound to it
    os.set_inheritable(fd, False)  # passed to us inheritable: no task may hold the farm's socket
    sock = socket.socket(fileno=fd)
    if mode == "ns":
        return namespace(libc, sock, marker)
    try:
        libc.prctl(PR_SET_CHILD_SUBREAPER, 1)  # a task's orphans come to us, to be reaped
    except OSError:
        pass
    return Nursery(sock, libc, "plain", marker, None).serve()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
