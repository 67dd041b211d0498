"""Runs one daemon under a held lock: its lifecycle, restarts and stops.

    lock = FlockLock(job.lock_dir, job.name)
    if lock.try_acquire():
        exit_code = Supervisor(job, lock, StateStore(root)).run()

Lifecycle: starting -> running -> (daemon exits) -> starting at once, or backoff after
BURST quick runs in a row ... until SIGTERM or SIGINT (stopping -> stopped), or the restart
policy says the daemon is done (exited). With `forking`, a command that exits 0 leaving
processes behind has put itself in the background: the supervisor follows that tree as the
daemon until none of it is left.

The supervisor is a child subreaper (set by the launcher before exec), so orphans of the tree
re-parent here; every process of the tree carries the job's token, which finds the rest. The
daemon inherits the lock's descriptor: while any copy runs the lock stays held, even if the
supervisor is SIGKILLed. What this module does not do itself lives beside it: `pump` moves
output, `lockwatch` looks after the lock file, `tree` finds and stops the tree, `spawn` starts
the command. Each is a seam (`Seams`) that the unit tests replace with a fake clock and a fake
process table. The steps of periodic runs and deadlines (`supervisor_periodic`) and of a cluster
job's lease (`supervisor_lease`) are parts of the class kept in modules of their own.
"""

from __future__ import annotations

import _signal
import math
import os
import time

from . import notify, procs, tree
from .daemonenv import daemon_env
from .envvars import CLUSTER_ENV, FENCING_TOKEN_ENV
from .errors import CANNOT_EXECUTE, SIGNALLED, UserError
from .files import ensure_dir
from .jobs import JobStore
from .lockwatch import DUPLICATE, LockWatch
from .logsink import LogSink
from .pump import OutputPump
from .quoting import shell_join
from .spawn import SpawnError, spawn
from .state import CARRIED, RunState, StateKeeper
from .supervisor_lease import LeaseSteps
from .supervisor_periodic import PeriodicSteps
from .timefmt import FORMAT as TIME_FORMAT
from .timefmt import now_iso

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing stays out of the resident supervisor's memory; annotations are strings
    from typing import Any, Callable, Optional

    from .jobs import Job
    from .leases import ClusterLease
    from .leases.guard import ClusterGuard
    from .lock import SingletonLock
    from .periodic import PeriodicRuns
    from .spawn import Spawned
    from .state import StateStore

    Ready = Callable[[Optional[str]], None]

BURST = 3  # quick runs in a row restarted at once; backoff begins with the next
SIGTERM, SIGINT, SIGHUP, SIGCHLD, SIGUSR2 = (_signal.SIGTERM, _signal.SIGINT, _signal.SIGHUP, _signal.SIGCHLD,
                                             _signal.SIGUSR2)


def restart_delay(job: Job, quick_runs: int) -> float:
    """0 for the first BURST quick runs in a row, then initial, 2x initial, ... up to max."""
    if quick_runs < BURST:
        return 0.0
    initial = max(0.1, _finite(job.backoff_initial, 1.0))
    longest = max(initial, _finite(job.backoff_max, 60.0))
    return min(longest, initial * 2.0 ** min(quick_runs - BURST, 40))


def _finite(value: float, default: float) -> float:
    return value if math.isfinite(value) else default


def reap_children() -> list[tuple[int, int]]:
    """(pid, exit code) of every exited child, ours or adopted."""
    exited: list[tuple[int, int]] = []
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return exited
        if pid == 0:
            return exited
        exited.append((pid, os.waitstatus_to_exitcode(status)))


class Seams:
    """What the supervisor touches of the world; tests pass fakes (clock, processes, waiting)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time,
                 spawn: Callable[..., Spawned] = spawn, scan: Callable[[], dict[int, procs.Proc]] = procs.scan,
                 reap: Callable[[], list[tuple[int, int]]] = reap_children,
                 wait: Optional[Callable[[float], None]] = None, send: Callable[[int, int], None] = os.kill,
                 sleep: Callable[[float], None] = time.sleep, pid: int = 0,
                 lease_clock: Optional[Callable[[], float]] = None, threads: bool = True) -> None:
        self.clock = clock
        self.wall = wall
        self.spawn = spawn
        self.scan = scan
        self.reap = reap
        self.wait = wait  # None: sleep in the output pump's poll
        self.send = send
        self.sleep = sleep
        self.pid = pid or os.getpid()
        self.lease_clock = lease_clock  # None: CLOCK_BOOTTIME (leases.keeper)
        self.threads = threads  # False: a cluster lease is renewed inline, in the supervisor's tick


class Supervisor(LeaseSteps, PeriodicSteps):
    def __init__(self, job: Job, lock: SingletonLock, store: StateStore, *,
                 adhoc: bool = False, passthrough: bool = False,
                 inherit_env: Optional[dict[str, str]] = None, ready: Optional[Ready] = None,
                 history: Optional[dict[str, Any]] = None, seams: Optional[Seams] = None,
                 cluster: Optional[ClusterLease] = None) -> None:
        self.job = job
        self.lock = lock
        self.store = store
        self.adhoc = adhoc
        self.passthrough = passthrough
        self.inherit_env = inherit_env
        self.ready = ready
        self.seams = seams or Seams()
        self.stopper = tree.Stopper(send=self.seams.send, clock=self.seams.clock, sleep=self.seams.sleep,
                                    reap=self._reap)
        self.state = RunState(name=job.name, phase="starting", boot_id=procs.boot_id(),
                              supervisor_pid=self.seams.pid, supervisor_start=procs.start_time(self.seams.pid),
                              command=job.command, lock_path=job.lock_path, stdout_log=job.stdout_log,
                              stderr_log=job.stderr_log, adhoc=adhoc)
        for key in CARRIED:  # the history goes on across supervisors
            if history and key in history:
                setattr(self.state, key, history[key])
        self._notes: list[str] = []  # notes made before the log sinks exist
        self.keeper = StateKeeper(store, self.state, self._note)
        # Claim the job before anything else: a launcher that finds a fresh lock file (the old
        # one deleted) sees this live supervisor and leaves.
        self.keeper.save()
        self.daemon: Optional[int] = None  # the pid we wait for: the command, or what it left (forking)
        self.following = False  # forking: the command exited 0 and its tree is followed as the daemon
        self.daemon_started = 0.0
        self.settle_at: Optional[float] = None
        self.quick_runs = 0
        self.next_start = 0.0
        self.stopping = False
        self.duplicate = False
        self.done_code: Optional[int] = None
        # A periodic job's due times and record; None for a daemon kept alive.
        self.periodic: Optional[PeriodicRuns] = None
        if job.periodic:  # imported only here: a daemon kept alive does not carry the scheduling code
            from .periodic import PeriodicRuns

            self.periodic = PeriodicRuns(job, self.state, self.seams.wall, self.seams.clock)
        self.deadline: Optional[float] = None  # the running command's timeout or max lifetime
        self.ending: Optional[str] = None  # "timeout" or "lifetime" while we end the run ourselves
        self._signals: list[int] = []
        self._healed_at = 0.0
        self._wake: Callable[[], None] = lambda: None  # wakes the main loop (set in run)
        # A cluster job's lease: asked for before each start, renewed while it runs (leases/guard).
        self.guard: Optional[ClusterGuard] = self._lease_guard(cluster) if cluster is not None else None
        self._lease_said = ""  # the last lease problem written to the log (each is written once)

    # -- main loop -------------------------------------------------------------------------
    def run(self) -> int:
        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        old_wakeup = _signal.set_wakeup_fd(wake_w)
        handled = (SIGTERM, SIGINT, SIGHUP, SIGCHLD, SIGUSR2)
        old_handlers = {sig: _signal.signal(sig, self._on_signal) for sig in handled}
        self.pump = OutputPump(wake_r, self.seams.clock)
        self.wait = self.seams.wait or self.pump.wait
        self._wake = self._waker(wake_w)
        if not self.passthrough:
            self._room_wake = self._wake
            self.out, self.err = self._open_sinks(self.job)
            for text in self._notes:
                self.err.note(text)
        self.watch = LockWatch(self.lock, self._note, self.seams.clock())
        if self.periodic is not None:
            self._wait_for(self.periodic.first_due())
            if self.periodic.note_catch_up is not None:
                self._note(f"due time {self.periodic.when(self.periodic.note_catch_up)} was missed: "
                           "one make-up run now")
            if not self.periodic.once:
                self._report_ready(None)  # the supervisor keeps the due times: it runs now
        try:
            while True:
                self._handle_events()
                if self.stopping or self.duplicate or self.done_code is not None:
                    break
                now = self.seams.clock()
                if self.daemon is None and now >= self.next_start:
                    if self.guard is None or self._lease_gate():
                        self._start_daemon()
                    continue
                self._tick(now)
                self.wait(max(0.0, self._wake_at(now) - now))
            return self._finish()
        finally:
            self.pump.close()
            self._close_sinks()
            _signal.set_wakeup_fd(old_wakeup)
            for sig, handler in old_handlers.items():
                _signal.signal(sig, handler)
            if self.guard is not None:
                self.guard.close()  # after the tree is gone: a standby may take over at once
            os.close(wake_r)
            os.close(wake_w)
            self.lock.release()

    @staticmethod
    def _waker(wake_w: int) -> Callable[[], None]:
        def wake() -> None:
            try:
                os.write(wake_w, b"\0")
            except OSError:
                pass  # the pipe is full: the loop wakes anyway
        return wake

    def _open_sinks(self, job: Job) -> tuple[LogSink, LogSink]:
        """The job's stdout and stderr sinks: one sink when both go to one file (`>> out 2>&1`),
        since two would rotate it under each other. A log that had no room wakes the loop the
        moment it has (`on_room`): a held pipe is read again at once, not at the next timeout."""
        out = LogSink(job.stdout_log, job.log_max_bytes, job.log_backups)
        try:
            err = out if job.stderr_log == job.stdout_log else \
                LogSink(job.stderr_log, job.log_max_bytes, job.log_backups)
        except BaseException:
            out.close()
            raise
        out.on_room = err.on_room = self._room_wake
        return out, err

    def _tick(self, now: float) -> None:
        """The timed chores: readiness after the settle time, a run's timeout or lifetime, the lock
        watch, a failed state write."""
        if self.settle_at is not None and now >= self.settle_at:
            self._report_ready(None)
        if self.deadline is not None and now >= self.deadline and self.daemon is not None:
            self._end_run_ourselves(now)
        if self.guard is not None:
            self._lease_tick()
        if self.watch.due(now) and self.watch.check(now) == DUPLICATE:
            self.duplicate = True
        if not self.duplicate and (self.keeper.error is not None or self.watch.next_check != self._healed_at):
            self._healed_at = self.watch.next_check  # once per lock check, or every wake while failing
            self.keeper.heal()

    def _wake_at(self, now: float) -> float:
        times = [self.watch.next_check]
        if self.daemon is None:
            times.append(self.next_start)
        elif self.deadline is not None:
            times.append(self.deadline)
        if self.settle_at is not None:
            times.append(self.settle_at)
        if self.keeper.error is not None:
            times.append(now + StateKeeper.RETRY_SECONDS)
        if self.guard is not None:
            look = self.guard.seconds_to_look()
            if look is not None:
                times.append(now + look)
        held = self.pump.next_wake(now)
        if held is not None:
            times.append(held)
        return min(times)

    def _finish(self) -> int:
        if self.duplicate:
            # A duplicate steps down: only its own descendants go, and the state is not ours to write.
            own = tree.Finder(self.job.lock_path, roots=lambda: (self.seams.pid,), scan=self.seams.scan,
                              marked=False)
            self.stopper.stop(own, self.job.grace)
            self.pump.drain_all()
            return 0
        if self.state.phase == "standby" and self.daemon is None:
            self.keeper.save()  # the cluster lease is another host's: nothing of ours ran
        else:
            self._stop_tree("stopping: " + ("signal received" if self.stopping else "daemon done"))
        self._report_ready(None)
        if self.adhoc:
            self.store.delete(self.job.name)  # an ad-hoc row lives as long as its run
        code = self.done_code if self.done_code is not None else 0
        return SIGNALLED - code if code < 0 else code  # killed by signal N: exit 128+N, as shells do

    def request_stop(self) -> None:
        self.stopping = True

    def _on_signal(self, signum: int, frame: object) -> None:
        self._signals.append(signum)

    def _handle_events(self) -> None:
        while self._signals:
            sig = self._signals.pop(0)
            if sig in (SIGTERM, SIGINT):
                self.stopping = True
            elif sig == SIGHUP and not self.passthrough:
                self.out.reopen()
                self.err.reopen()
            elif sig == SIGUSR2:
                self._reload()
        self._reap()

    # -- the daemon ------------------------------------------------------------------------
    def _start_daemon(self) -> None:
        job = self.job
        self.state.phase = "starting"
        try:
            if job.state_folder:
                ensure_dir(job.state_folder)
            env = daemon_env(job, self.inherit_env)
            if self.guard is not None and self.guard.token is not None:
                env[FENCING_TOKEN_ENV] = str(self.guard.token)
                env[CLUSTER_ENV] = job.cluster  # `lease check NAME --token ...` asks this database
            child = self.seams.spawn(job.command, job.workdir, env, self.lock.inheritable_fds(), not self.passthrough)
        except (SpawnError, OSError, UserError) as exc:
            if isinstance(exc, OSError) and not isinstance(exc, SpawnError):
                message = f"cannot start {job.command[0]}: {exc.strerror}"
            else:
                message = str(exc)
            self._note(message)
            self._report_ready(message)
            self._after_exit(exc.code if isinstance(exc, SpawnError) else CANNOT_EXECUTE, message)
            return
        if child.stdout is not None and child.stderr is not None:
            self.pump.watch(child.stdout, self.out)
            self.pump.watch(child.stderr, self.err)
        self.daemon = child.pid
        self.following = False
        self.daemon_started = self.seams.clock()
        self.state.pid = child.pid
        self.state.pid_start = procs.start_time(child.pid)
        self.state.phase = "running"
        self.state.started_at = now_iso()
        self.state.next_start_at = None
        self.state.backoff_seconds = 0.0  # the message stays: a hint about the last exit still holds
        self.keeper.save()
        self._note(f"started pid {child.pid}: {shell_join(job.command)}")
        self._arm_deadline()
        if self.ready is not None:
            settle = max(0.0, _finite(job.settle, 1.0))
            if settle == 0:
                self._report_ready(None)  # started is enough (a cron tick): what follows is the supervisor's
            else:
                self.settle_at = self.daemon_started + settle

    def _reload(self) -> None:
        """SIGUSR2 (install or apply changed the definition): take the new settings that need no
        restart (schedule, grace, timeouts, backoff, log sizes and files) without one."""
        if self.adhoc:
            return
        try:
            new = JobStore(self.store.root).load(self.job.name)
        except UserError as exc:
            self._note(f"cannot re-read the definition: {exc}")
            return
        if new is None or new.needs_restart_from(self.job):
            return  # uninstalled, or a change that needs a restart: install and apply do that
        old, self.job = self.job, new
        if not self.passthrough and (new.stdout_log, new.stderr_log) != (old.stdout_log, old.stderr_log):
            try:
                out, err = self._open_sinks(new)
            except OSError as exc:
                self.job = old
                self._note(f"cannot re-read the definition: {exc}")
                return
            moved = {id(self.out): out, id(self.err): err}
            for fd, sink in list(self.pump.sinks.items()):
                self.pump.sinks[fd] = moved.get(id(sink), sink)
            self._close_sinks()
            self.out, self.err = out, err
        elif not self.passthrough:
            for sink in {id(self.out): self.out, id(self.err): self.err}.values():
                sink.max_bytes, sink.backups = new.log_max_bytes, new.log_backups
        self.state.stdout_log, self.state.stderr_log = new.stdout_log, new.stderr_log
        if self.periodic is not None and (new.every, new.schedule, new.catch_up) != (old.every, old.schedule,
                                                                                      old.catch_up):
            from .periodic import PeriodicRuns

            self.periodic = PeriodicRuns(new, self.state, self.seams.wall, self.seams.clock)
            if self.daemon is None:
                self._wait_for(self.periodic.first_due())
        if self.daemon is not None and self.periodic is None:
            self.deadline = self.daemon_started + new.max_lifetime if new.max_lifetime > 0 else None
        self._note("re-read its definition: new settings in force")
        self.keeper.save()

    def _report_ready(self, problem: Optional[str]) -> None:
        """Tell whoever waits for the start (install, start, run --detach) how it went, once."""
        self.settle_at = None
        if self.ready is not None:
            ready, self.ready = self.ready, None
            ready(problem)

    def _reap(self) -> None:
        """Reap every exited child, ours or adopted; act on the daemon's exit."""
        for pid, code in self.seams.reap():
            if pid == self.daemon:
                self.daemon = None
                self._on_daemon_exit(pid, code)
        if self.following and self.daemon is None:
            self._follow_or_exit(0)

    def _tree(self) -> dict[int, int]:
        return tree.members(self.seams.scan(), self.job.lock_path, (self.seams.pid,), (self.seams.pid,))

    def _on_daemon_exit(self, pid: int, code: int) -> None:
        lasted = self.seams.clock() - self.daemon_started
        what = f"pid {pid} (of the tree it left)" if self.following else f"pid {pid}"
        self._note(f"{what} {procs.exit_text(code)} after {lasted:.1f} s")
        if self.duplicate:
            return  # stepping down: the job's tree and state belong to the other supervisor
        if self.stopping or self.ending:
            self._after_exit(code, "", lasted)  # we are stopping the tree already
            return
        left = self._tree()
        if left and (self.following or (code == 0 and self.job.forking)):
            self.following = True
            self._follow_or_exit(code, left)
            return
        message = ""
        if left:
            if code == 0:
                processes = "process" if len(left) == 1 else "processes"
                message = (f"exited 0 leaving {len(left)} {processes}: if it daemonizes itself, install it "
                           "with --forking or run it in the foreground")
                self._note(message)
            # Like systemd's KillMode=control-group: what the daemon left behind goes with it.
            self._stop_tree(f"stopping {len(left)} leftover process(es) of the daemon's tree", leftovers=True)
        self._after_exit(code, message, lasted)

    def _follow_or_exit(self, code: int, left: Optional[dict[int, int]] = None) -> None:
        """Forking: the oldest process the command left is the daemon now; none left is an exit."""
        left = self._tree() if left is None else left
        if not left:
            self.following = False
            self._after_exit(code, "", self.seams.clock() - self.daemon_started)
            return
        main = min(left, key=lambda pid: (left[pid], pid))
        if main != self.state.pid:
            self._note(f"following pid {main} ({len(left)} process(es) in the background)")
        self.daemon = main
        self.state.pid, self.state.pid_start, self.state.phase = main, left[main], "running"
        self.state.message = ""
        self.keeper.save()

    def _after_exit(self, code: int, message: str, lasted: float = 0.0) -> None:
        job = self.job
        self.daemon = None
        self.following = False  # forking: the tree is gone, and this is its one exit
        self.state.last_exit_code = code
        self.state.last_exit_at = now_iso()
        self.state.pid = self.state.pid_start = None
        self.state.message = message
        if self.periodic is not None:
            self._after_periodic_run(code, message)
            return
        self._lease_run_ended()
        lifetime, self.ending = self.ending == "lifetime", None
        if self.settle_at is not None:
            log = "" if self.passthrough else f"; see {job.stderr_log}"
            detail = f" ({message})" if message else ""
            self._report_ready(f"{job.name} {procs.exit_text(code)} {lasted:.1f} s after it started{detail}{log}")
        policy_done = job.restart == "never" or (job.restart == "on-failure" and code == 0)
        if policy_done or self.stopping:
            self.done_code = code
            self.state.phase = "exited"
            self.keeper.save()
            return
        quick = lasted < _finite(job.min_uptime, 1.0) and not lifetime
        self.quick_runs = self.quick_runs + 1 if quick else 0
        delay = restart_delay(job, self.quick_runs)
        self.next_start = self.seams.clock() + delay
        self.state.restarts += 1
        self.state.phase = "backoff" if delay else "starting"
        self.state.backoff_seconds = delay
        self.state.next_start_at = time.strftime(TIME_FORMAT, time.localtime(self.seams.wall() + delay))
        if delay:
            backoff = f"{self.quick_runs} quick exits in a row: next start in {delay:g} s"
            self.state.message = f"{message}; {backoff}" if message else backoff
            self._note(f"restart in {delay:g} s ({self.quick_runs} runs shorter than {job.min_uptime:g} s in a row)")
            notify.job_event(job, "backoff", code, self.state.message, self._note, self.inherit_env)
        self.keeper.save()

    # -- stopping ----------------------------------------------------------------------------
    def _stop_tree(self, why: str, leftovers: bool = False) -> None:
        self.state.phase = "stopping"
        self.state.pid = self.state.pid_start = None
        self.keeper.save()
        finder = tree.Finder(self.job.lock_path, roots=lambda: (self.seams.pid,), scan=self.seams.scan)

        def say(count: int) -> None:
            if count and (not leftovers or self.ending):  # ending: a timeout or --max-lifetime
                self._note(f"{why}; SIGTERM to {count} process(es), SIGKILL after {wait:g} s")
            elif count:
                self._note(why)

        wait = self.job.grace
        if self.guard is not None:
            # A lease holder's tree must be gone before the lease can pass, even when the database
            # becomes unreachable in the middle of a stop: every stop fits the stop budget.
            wait = self.guard.timing.capped_grace(wait)
        survivors = self.stopper.stop(finder, wait, on_first=say)
        if survivors:
            self._note(f"pids {sorted(survivors)} survived SIGKILL (stuck in the kernel?)")
        self._reap_quietly()
        self.pump.drain_all()
        if not leftovers:
            self.state.phase = "stopped" if self.stopping else "exited"
            self.keeper.save()

    def _reap_quietly(self) -> None:
        for pid, _code in self.seams.reap():
            if pid == self.daemon:
                self.daemon = None

    # -- the log ---------------------------------------------------------------------------
    def _note(self, text: str) -> None:
        if self.passthrough:
            return
        if hasattr(self, "err"):
            self.err.note(text)
        else:
            self._notes.append(text)  # before the sinks exist: written once they do

    def _close_sinks(self) -> None:
        if not self.passthrough and hasattr(self, "err"):
            self.out.close()
            self.err.close()
