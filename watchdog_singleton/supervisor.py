"""Runs one daemon under a held lock: its session, its output, restarts, and killing its tree.

    lock = FlockLock(job.lock_dir, job.name)
    if lock.try_acquire():
        exit_code = Supervisor(job, lock, StateStore(root)).run()

Lifecycle: starting -> running -> (daemon exits) -> backoff -> starting ... until SIGTERM or
SIGINT (stopping -> stopped), or the restart policy says the daemon is done (exited).
The supervisor is a child subreaper, so a daemon that double-forks and calls setsid leaves its
grandchildren re-parented here, where they can still be found and killed. Every process of the
tree also carries the job's token in its environment, which finds them even after the
supervisor itself died. The daemon inherits the lock's descriptor: while any copy runs the
lock stays held, even if the supervisor is SIGKILLed.
"""

from __future__ import annotations

import errno
import fcntl
import os
import pwd
import selectors
import signal
import subprocess
import time
from dataclasses import dataclass, field

from . import procs
from .jobs import Job, now_iso
from .lock import REPAIRED, TAKEN
from .logsink import LogSink
from .state import RunState, StateStore

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing stays out of the resident supervisor's memory; annotations are strings
    from typing import Callable, Optional

    from .lock import SingletonLock

PR_SET_CHILD_SUBREAPER = 36
LOCK_CHECK_SECONDS = 1.0
LOCK_TAKEN_CHECKS = 3  # another process held our path this many checks in a row: we are a duplicate
PIPE_SIZE = 1024 * 1024
READ_SIZE = 1024 * 1024
# While a log's queue is full the daemon's pipe is not read (backpressure: the daemon waits, and a
# disk that stalls for a moment loses nothing); a disk stuck longer than this gets output dropped
# and counted instead, so that the daemon is never blocked for long.
BACKPRESSURE_SECONDS = 0.5


def become_subreaper() -> bool:
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def daemon_env(job: Job, inherit: Optional[dict[str, str]] = None) -> dict[str, str]:
    """The daemon's environment: the same whether cron or the user's shell started it."""
    if inherit is not None:
        env = dict(inherit)
    else:
        user = pwd.getpwuid(os.getuid())
        env = {"HOME": user.pw_dir, "USER": user.pw_name, "LOGNAME": user.pw_name,
               "SHELL": user.pw_shell or "/bin/sh", "PATH": "/usr/local/bin:/usr/bin:/bin"}
    env.update(job.env)
    env[procs.JOB_ENV] = job.name
    env[procs.TOKEN_ENV] = job.lock_path
    return env


def next_delay(job: Job, failures: int) -> float:
    """Exponential backoff: 0 after a run that lasted, then initial, 2x initial, ... up to max."""
    if failures <= 0:
        return 0.0
    return float(min(job.backoff_max, job.backoff_initial * 2 ** (failures - 1)))


@dataclass
class Seams:
    """Time and signals, injectable so tests drive them instead of sleeping."""

    clock: Callable[[], float] = time.monotonic
    wall: Callable[[], float] = time.time
    killer: procs.Killer = field(default_factory=procs.Killer)


class Supervisor:
    def __init__(self, job: Job, lock: SingletonLock, store: StateStore, *,
                 adhoc: bool = False, passthrough: bool = False,
                 inherit_env: Optional[dict[str, str]] = None,
                 ready: Optional[Callable[[Optional[str]], None]] = None,
                 seams: Optional[Seams] = None) -> None:
        self.job = job
        self.lock = lock
        self.store = store
        self.passthrough = passthrough
        self.inherit_env = inherit_env
        self.ready = ready
        self.seams = seams or Seams()
        self.seams.killer.reap = self._reap
        self.state = RunState(name=job.name, phase="starting", boot_id=procs.boot_id(),
                              supervisor_pid=os.getpid(), supervisor_start=procs.start_time(os.getpid()),
                              command=job.command, lock_path=job.lock_path, stdout_log=job.stdout_log,
                              stderr_log=job.stderr_log, adhoc=adhoc)
        previous = store.load(job.name)
        if previous is not None:  # the history goes on across supervisors
            self.state.restarts = previous.restarts
            self.state.last_exit_code = previous.last_exit_code
            self.state.last_exit_at = previous.last_exit_at
        # Claim the job before anything else: a launcher that finds a fresh lock file (the old
        # one deleted) sees this live supervisor and leaves.
        store.save(self.state)
        self.daemon: Optional[subprocess.Popen[bytes]] = None
        self.daemon_started = 0.0
        self.failures = 0
        self.next_start = 0.0
        self.stopping = False
        self.duplicate = False
        self.lock_taken_checks = 0
        self.done_code: Optional[int] = None
        self.sinks: dict[int, LogSink] = {}
        self.held: dict[int, float] = {}  # pipes not read for now (their log is full) -> since when
        self.overflowing: set[int] = set()  # pipes whose log stayed full too long: read, and drop
        self.selector = selectors.DefaultSelector()
        self._signals: list[int] = []

    # -- main loop -------------------------------------------------------------------------
    def run(self) -> int:
        become_subreaper()
        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.selector.register(wake_r, selectors.EVENT_READ, "wake")
        old_wakeup = signal.set_wakeup_fd(wake_w)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(sig, self._on_signal)
        if not self.passthrough:
            self.out = LogSink(self.job.stdout_log, self.job.log_max_bytes, self.job.log_backups)
            self.err = LogSink(self.job.stderr_log, self.job.log_max_bytes, self.job.log_backups)
        next_lock_check = self.seams.clock() + LOCK_CHECK_SECONDS
        try:
            while True:
                self._handle_signals()
                if self.stopping or self.duplicate or self.done_code is not None:
                    break
                now = self.seams.clock()
                if self.daemon is None and now >= self.next_start:
                    self._start_daemon()
                    continue
                if now >= next_lock_check:
                    self._check_lock()
                    next_lock_check = now + LOCK_CHECK_SECONDS
                wake_at = next_lock_check if self.daemon else min(next_lock_check, self.next_start)
                if self.held or self.overflowing:
                    self._release_held(now)
                if self.held:
                    wake_at = min(wake_at, now + 0.05)
                self._poll(max(0.0, wake_at - now), wake_r)
            if self.duplicate:
                self._stop_own_tree()
                return 0
            self._stop_tree("stopping: " + ("signal received" if self.stopping else "daemon done"))
            code = self.done_code if self.done_code is not None else 0
            return 128 - code if code < 0 else code  # killed by signal N: exit 128+N, as shells do
        finally:
            self._close_sinks()
            signal.set_wakeup_fd(old_wakeup)
            os.close(wake_r)
            os.close(wake_w)
            self.lock.release()

    def _on_signal(self, signum: int, frame: object) -> None:
        self._signals.append(signum)

    def _handle_signals(self) -> None:
        while self._signals:
            sig = self._signals.pop(0)
            if sig in (signal.SIGTERM, signal.SIGINT):
                self.stopping = True
            elif sig == signal.SIGHUP and not self.passthrough:
                self.out.reopen()
                self.err.reopen()
        self._reap()

    def _poll(self, timeout: float, wake_r: int) -> None:
        for key, _ in self.selector.select(timeout):
            if key.data == "wake":
                try:
                    while os.read(wake_r, 512):
                        pass
                except BlockingIOError:
                    pass
            else:
                self._drain(key.fd)

    def _drain(self, fd: int, until_eof: bool = False) -> None:
        while True:
            sink = self.sinks[fd]
            if not until_eof and fd not in self.overflowing and not sink.has_room(READ_SIZE):
                self.selector.unregister(fd)
                self.held[fd] = self.seams.clock()
                return
            try:
                data = os.read(fd, READ_SIZE)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                if self.held.pop(fd, None) is None:
                    self.selector.unregister(fd)
                self.overflowing.discard(fd)
                os.close(fd)
                del self.sinks[fd]
                return
            sink.feed(data)
            if not until_eof:
                return

    def _release_held(self, now: float) -> None:
        """Read held pipes again once their log has room, or drop their output once held too long."""
        for fd, since in list(self.held.items()):
            room = self.sinks[fd].has_room(READ_SIZE)
            if room or now - since >= BACKPRESSURE_SECONDS:
                if not room:
                    self.overflowing.add(fd)
                del self.held[fd]
                self.selector.register(fd, selectors.EVENT_READ, "log")
        for fd in list(self.overflowing):
            if self.sinks[fd].has_room(READ_SIZE):
                self.overflowing.discard(fd)

    # -- the daemon ------------------------------------------------------------------------
    def _start_daemon(self) -> None:
        job = self.job
        stdout: Optional[int] = None
        stderr: Optional[int] = None
        if not self.passthrough:
            out_r, stdout = self._pipe()
            err_r, stderr = self._pipe()
        self.state.phase = "starting"
        try:
            self.daemon = subprocess.Popen(
                job.command, cwd=job.workdir, env=daemon_env(job, self.inherit_env),
                stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr,
                pass_fds=self.lock.inheritable_fds(),
                start_new_session=True)  # its own session: no terminal, one group to signal
        except OSError as exc:
            message = f"cannot start {job.command[0]}: {exc.strerror}"
            if not self.passthrough:
                for fd in (out_r, err_r):
                    os.close(fd)
            self._note(message)
            self._after_exit(127 if exc.errno == errno.ENOENT else 126, message)
            if self.ready:
                self.ready(message)
                self.ready = None
            return
        finally:
            for write_end in (stdout, stderr):
                if write_end is not None:
                    os.close(write_end)
        if not self.passthrough:
            self._watch(out_r, self.out)
            self._watch(err_r, self.err)
        self.daemon_started = self.seams.clock()
        self.state.pid = self.daemon.pid
        self.state.pid_start = procs.start_time(self.daemon.pid)
        self.state.phase = "running"
        self.state.started_at = now_iso()
        self.state.next_start_at = None
        self.state.backoff_seconds = 0.0
        self.state.message = ""
        self.store.save(self.state)
        self._note(f"started pid {self.daemon.pid}: {' '.join(job.command)}")
        if self.ready:
            self.ready(None)
            self.ready = None

    def _pipe(self) -> tuple[int, int]:
        r, w = os.pipe2(os.O_CLOEXEC)
        try:
            fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, PIPE_SIZE)  # room for bursts while we write
        except OSError:
            pass
        os.set_blocking(r, False)
        return r, w

    def _watch(self, fd: int, sink: LogSink) -> None:
        self.sinks[fd] = sink
        self.selector.register(fd, selectors.EVENT_READ, "log")

    def _reap(self) -> None:
        """Reap every exited child, ours or adopted; note the daemon's exit."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if self.daemon is not None and pid == self.daemon.pid:
                code = os.waitstatus_to_exitcode(status)
                self.daemon.returncode = code
                self.daemon = None
                self._on_daemon_exit(code)

    def _on_daemon_exit(self, code: int) -> None:
        lasted = self.seams.clock() - self.daemon_started
        self._note(f"pid {self.state.pid} exited with {'signal ' + str(-code) if code < 0 else 'code ' + str(code)}"
                   f" after {lasted:.1f} s")
        if not self.stopping:
            # Like systemd's KillMode=control-group: what the daemon left behind goes with it.
            self._kill_leftovers()
        self._after_exit(code, "", lasted)

    def _after_exit(self, code: int, message: str, lasted: float = 0.0) -> None:
        job = self.job
        self.state.last_exit_code = code
        self.state.last_exit_at = now_iso()
        self.state.pid = self.state.pid_start = None
        self.state.message = message
        policy_done = job.restart == "never" or (job.restart == "on-failure" and code == 0)
        if policy_done or self.stopping:
            self.done_code = code
            self.state.phase = "exited"
            self.store.save(self.state)
            return
        self.failures = 0 if lasted >= job.min_uptime else self.failures + 1
        delay = next_delay(job, self.failures)
        self.next_start = self.seams.clock() + delay
        self.state.restarts += 1
        self.state.phase = "backoff" if delay else "starting"
        self.state.backoff_seconds = delay
        self.state.next_start_at = time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(self.seams.wall() + delay))
        self.store.save(self.state)
        if delay:
            self._note(f"restart in {delay:g} s (failure {self.failures} in a row)")

    # -- the tree --------------------------------------------------------------------------
    def _tree(self) -> dict[int, int]:
        table = procs.all_procs()
        pids = procs.descendants(table, [os.getpid()]) | procs.marked_with(table, self.job.lock_path)
        pids.discard(os.getpid())
        return procs.identities(table, pids)

    def _kill_leftovers(self) -> None:
        left = self._tree()
        if left:
            self._note(f"stopping {len(left)} leftover process(es) of the daemon's tree")
            self.seams.killer.terminate(left, self.job.grace)
        self._drain_all()

    def _stop_tree(self, why: str) -> None:
        self.state.phase = "stopping"
        self.store.save(self.state)
        tree = self._tree()
        if tree:
            self._note(f"{why}; SIGTERM to {len(tree)} process(es), SIGKILL after {self.job.grace:g} s")
            self.seams.killer.terminate(tree, self.job.grace)
        self._reap()
        self._drain_all()
        self.state.phase = "stopped" if self.stopping else "exited"
        self.state.pid = self.state.pid_start = None
        self.store.save(self.state)

    def _stop_own_tree(self) -> None:
        """A duplicate steps down: only its own descendants go, and the state is not ours to write."""
        table = procs.all_procs()
        own = procs.identities(table, procs.descendants(table, [os.getpid()]))
        if own:
            self.seams.killer.terminate(own, self.job.grace)
        self._reap()
        self._drain_all()

    def _drain_all(self) -> None:
        for fd in list(self.sinks):
            self._drain(fd, until_eof=True)

    # -- the lock and the logs -------------------------------------------------------------
    def _check_lock(self) -> None:
        if self.lock.still_ours():
            self.lock_taken_checks = 0
        else:
            outcome = self.lock.repair()
            if outcome == REPAIRED:
                self.lock_taken_checks = 0
                self._note(f"lock file {self.lock.path} was removed; put it back")
            elif outcome == TAKEN:
                # A launcher checking for a live copy holds it for a moment; a second supervisor
                # (started in a race with a /tmp cleaner) holds it for good, and then it is the one.
                self.lock_taken_checks += 1
                if self.lock_taken_checks >= LOCK_TAKEN_CHECKS:
                    self._note(f"another process holds {self.lock.path}: this supervisor is a duplicate; "
                               "stopping its own tree")
                    self.duplicate = True
        self.lock.refresh()
        self._reassert_state()

    def _reassert_state(self) -> None:
        """Rewrite our state if someone else's is on file (a duplicate that stepped down)."""
        if self.duplicate:
            return
        current = self.store.load(self.job.name)
        if current is None or current.supervisor_pid != self.state.supervisor_pid:
            self.store.save(self.state)

    def _note(self, text: str) -> None:
        if not self.passthrough:
            self.err.note(text)

    def _close_sinks(self) -> None:
        if not self.passthrough:
            for fd in list(self.sinks):
                if self.held.pop(fd, None) is None:
                    self.selector.unregister(fd)
                os.close(fd)
            self.sinks.clear()
            self.out.close()
            self.err.close()
