"""Runs one daemon under a held lock: its lifecycle, restarts and stops.

    lock = FlockLock(job.lock_dir, job.name)
    if lock.try_acquire():
        exit_code = Supervisor(job, lock, StateStore(root)).run()

Lifecycle (phases.py names the phases and which may follow which): starting -> running ->
(daemon exits) -> starting at once, or backoff after BURST quick runs in a row ... until
SIGTERM or SIGINT (stopping -> stopped), or the restart policy says the daemon is done
(exited). A periodic job waits for each due time (waiting); a cluster job asks for its lease
before each start (standby while another host holds it). With `forking`, a command that exits 0
leaving processes behind has put itself in the background: the supervisor follows that tree as
the daemon until none of it is left.

The supervisor is a child subreaper (set by the launcher before exec), so orphans of the tree
re-parent here; every process of the tree carries the job's token, which finds the rest. The
daemon inherits the lock's descriptor: while any copy runs the lock stays held, even if the
supervisor is SIGKILLed.

This module is the loop and the actions (spawn, stop the tree, save, note). What to do after an
exit, a periodic run or at the lease gate is decided by the small objects of
`supervisor_decisions` (RestartPolicy, PeriodicPlan, LeaseGate), which touch nothing. What the
loop touches of the world goes through `Seams` (clock, wall clock, spawn, the process table,
reaping, signals, /proc, the job's definition on disk, folders, log files, stderr), which the
fake world of the tests replaces; `pump` moves output, `lockwatch` looks after the lock file,
`tree` finds and stops the tree, `supervisor_io` holds the log sinks and the wake-ups.
"""

from __future__ import annotations

import _signal
import os
import pwd
import time

from . import notify, procs
from .errors import UserError
from .files import ensure_dir
from .jobs import JobStore, iso
from .lockwatch import DUPLICATE, LockWatch
from .logsink import LogSink
from .paths import STATE_DIR_ENV
from .phases import Phase, allowed
from .pump import OutputPump
from .quoting import shell_join
from .spawn import SpawnError, spawn
from .state import CARRIED, RunState, StateKeeper
from .supervisor_child import Child, Exit, Follow
from .supervisor_decisions import BURST, Done, Go, NextDue, PeriodicPlan, RestartPolicy, Standby, finite, restart_delay
from .supervisor_io import Output, Wakeups

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing stays out of the resident supervisor's memory; annotations are strings
    from typing import Any, Callable, Optional

    from .jobs import Job
    from .leases import ClusterLease
    from .lock import SingletonLock
    from .spawn import Spawned
    from .state import StateStore
    from .supervisor_decisions import LeaseGate

    Ready = Callable[[Optional[str]], None]

__all__ = ["BURST", "Seams", "Supervisor", "daemon_env", "reap_children", "restart_delay"]
SIGTERM, SIGINT, SIGHUP, SIGCHLD, SIGUSR2 = (_signal.SIGTERM, _signal.SIGINT, _signal.SIGHUP, _signal.SIGCHLD,
                                             _signal.SIGUSR2)
LIFETIME, TIMEOUT, LEASE = "lifetime", "timeout", "lease"  # why we end a run ourselves (`Supervisor.ending`)


def daemon_env(job: Job, inherit: Optional[dict[str, str]] = None) -> dict[str, str]:
    """The daemon's environment: the same whether cron or the user's shell started it."""
    if inherit is not None:
        env = procs.clean_environ(inherit)
    else:
        user = pwd.getpwuid(os.getuid())
        env = {"HOME": user.pw_dir, "USER": user.pw_name, "LOGNAME": user.pw_name,
               "SHELL": user.pw_shell or "/bin/sh", "PATH": "/usr/local/bin:/usr/bin:/bin"}
    env.update(job.env)
    env[procs.JOB_ENV] = env[procs.NAME_ENV] = job.name
    env[procs.TOKEN_ENV] = job.lock_path
    if job.state_folder:
        env[STATE_DIR_ENV] = job.state_folder
    return env


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


def load_job(root: str, name: str) -> Optional[Job]:
    return JobStore(root).load(name)


def to_stderr(text: str) -> None:
    os.write(2, f"watchdog-singleton: {text}\n".encode())


class Seams:
    """What the supervisor touches of the world; tests pass fakes (clock, processes, waiting)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time,
                 spawn: Callable[..., Spawned] = spawn, scan: Callable[[], dict[int, procs.Proc]] = procs.scan,
                 reap: Callable[[], list[tuple[int, int]]] = reap_children,
                 wait: Optional[Callable[[float], None]] = None, send: Callable[[int, int], None] = os.kill,
                 sleep: Callable[[float], None] = time.sleep, pid: int = 0,
                 lease_clock: Optional[Callable[[], float]] = None, threads: bool = True,
                 boot_id: Callable[[], str] = procs.boot_id,
                 start_time: Callable[[int], Optional[int]] = procs.start_time,
                 load_job: Callable[[str, str], Optional[Job]] = load_job,
                 ensure_dir: Callable[[str], None] = ensure_dir,
                 open_sink: Callable[[str, int, int], LogSink] = LogSink,
                 stderr: Callable[[str], None] = to_stderr, strict: bool = False) -> None:
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
        self.boot_id = boot_id  # /proc: this boot, and a pid's start time, for the run state
        self.start_time = start_time
        self.load_job = load_job  # (state root, name): the definition on disk, re-read on SIGUSR2
        self.ensure_dir = ensure_dir
        self.open_sink = open_sink  # (path, max bytes, backups): a log file
        self.stderr = stderr  # a line for the terminal of a passthrough run
        self.strict = strict  # a phase change the table does not allow raises (tests), else is noted


class Supervisor:
    # Set up by `run`, which owns the signals' wake-up pipe they need.
    pump: OutputPump
    wait: Callable[[float], None]
    watch: LockWatch

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
        seams = self.seams = seams or Seams()
        self.child = Child(seams, self._reap)  # the daemon's tree
        self.state = RunState(name=job.name, phase=Phase.STARTING, boot_id=seams.boot_id(),
                              supervisor_pid=seams.pid, supervisor_start=seams.start_time(seams.pid),
                              command=job.command, lock_path=job.lock_path, stdout_log=job.stdout_log,
                              stderr_log=job.stderr_log, adhoc=adhoc)
        for key in CARRIED:  # the history goes on across supervisors
            if history and key in history:
                setattr(self.state, key, history[key])
        self.output = Output(passthrough, seams.open_sink)
        self.keeper = StateKeeper(store, self.state, self._note)
        # Claim the job before anything else: a launcher that finds a fresh lock file (the old
        # one deleted) sees this live supervisor and leaves.
        self.keeper.save()
        self.settle_at: Optional[float] = None
        self.next_start = 0.0
        self.stopping = False
        self.duplicate = False
        self.done_code: Optional[int] = None
        self.restarts = RestartPolicy(job)
        # A periodic job's due times and record; None for a daemon kept alive.
        self.periodic: Optional[PeriodicPlan] = self._plan(job) if job.periodic else None
        self.deadline: Optional[float] = None  # the running command's timeout or max lifetime
        self.ending: Optional[str] = None  # TIMEOUT, LIFETIME or LEASE while we end the run ourselves
        self.wakeups = Wakeups()
        self._healed_at = 0.0
        # A cluster job's lease: asked for before each start, renewed while it runs (leases/guard).
        self.lease: Optional[LeaseGate] = self._lease_gate(cluster) if cluster is not None else None
        self.guard = self.lease.guard if self.lease is not None else None

    def _plan(self, job: Job) -> PeriodicPlan:
        from .periodic import PeriodicRuns  # imported only here: a daemon kept alive does not load it

        return PeriodicPlan(PeriodicRuns(job, self.state, self.seams.wall, self.seams.clock))

    def _lease_gate(self, cluster: ClusterLease) -> LeaseGate:
        from .leases import Timing
        from .leases.guard import ClusterGuard
        from .leases.keeper import boottime
        from .supervisor_decisions import LeaseGate

        guard = ClusterGuard(self.job, cluster, Timing.for_lease(self.job.lease), self.wakeups.wake,
                             clock=self.seams.lease_clock or boottime, threaded=self.seams.threads)
        return LeaseGate(self.job, self.state, guard)

    # -- main loop -------------------------------------------------------------------------
    def run(self) -> int:
        self.pump = OutputPump(self.wakeups.open(), self.seams.clock)
        self.wait = self.seams.wait or self.pump.wait
        self.output.open(self.job, self.wakeups.wake)
        self.watch = LockWatch(self.lock, self._note, self.seams.clock())
        if self.periodic is not None:
            runs = self.periodic.runs
            self._wait_for(runs.first_due())
            if runs.note_catch_up is not None:
                self._note(f"due time {runs.when(runs.note_catch_up)} was missed: one make-up run now")
            if not runs.once:
                self._report_ready(None)  # the supervisor keeps the due times: it runs now
        try:
            while True:
                self._handle_events()
                if self.stopping or self.duplicate or self.done_code is not None:
                    break
                now = self.seams.clock()
                if self.child.pid is None and now >= self.next_start:
                    if self.lease is None or self._ask_lease(now):
                        self._start_daemon()
                    continue
                self._tick(now)
                self.wait(max(0.0, self._wake_at(now) - now))
            return self._finish()
        finally:
            self.pump.close()
            self.output.close()
            if self.guard is not None:
                self.guard.close()  # after the tree is gone: a standby may take over at once
            self.wakeups.close()
            self.lock.release()

    def _tick(self, now: float) -> None:
        """The timed chores: readiness after the settle time, a run's timeout or lifetime, the
        lease, the lock watch, a failed state write."""
        if self.settle_at is not None and now >= self.settle_at:
            self._report_ready(None)
        if self.deadline is not None and now >= self.deadline and self.child.pid is not None:
            self._end_run_ourselves()
        if self.lease is not None:
            self._lease_tick(self.lease)
        if self.watch.due(now) and self.watch.check(now) == DUPLICATE:
            self.duplicate = True
        if not self.duplicate and (self.keeper.error is not None or self.watch.next_check != self._healed_at):
            self._healed_at = self.watch.next_check  # once per lock check, or every wake while failing
            self.keeper.heal()

    def _wake_at(self, now: float) -> float:
        times = [self.watch.next_check]
        if self.child.pid is None:
            times.append(self.next_start)
        elif self.deadline is not None:
            times.append(self.deadline)
        if self.settle_at is not None:
            times.append(self.settle_at)
        if self.keeper.error is not None:
            times.append(now + StateKeeper.RETRY_SECONDS)
        look = self.guard.seconds_to_look() if self.guard is not None else None
        if look is not None:
            times.append(now + look)
        held = self.pump.next_wake(now)
        if held is not None:
            times.append(held)
        return min(times)

    def _finish(self) -> int:
        if self.duplicate:
            # A duplicate steps down: only its own descendants go, and the state is not ours to write.
            self.child.step_down(self.job)
            self.pump.drain_all()
            return 0
        if self.state.phase == Phase.STANDBY and self.child.pid is None:
            self.keeper.save()  # the cluster lease is another host's: nothing of ours ran
        else:
            self._stop_tree("stopping: " + ("signal received" if self.stopping else "daemon done"))
        self._report_ready(None)
        if self.adhoc:
            self.store.delete(self.job.name)  # an ad-hoc row lives as long as its run
        code = self.done_code if self.done_code is not None else 0
        return 128 - code if code < 0 else code  # killed by signal N: exit 128+N, as shells do

    def request_stop(self) -> None:
        self.stopping = True

    def _handle_events(self) -> None:
        while self.wakeups.signals:
            sig = self.wakeups.signals.pop(0)
            if sig in (SIGTERM, SIGINT):
                self.stopping = True
            elif sig == SIGHUP:
                self.output.reopen()
            elif sig == SIGUSR2:
                self._reload()
        self._reap()

    def _enter(self, phase: str, save: bool = True) -> None:
        """The one place the phase changes: checked against phases.NEXT, then saved."""
        old = self.state.phase
        if not allowed(old, phase):
            if self.seams.strict:
                raise AssertionError(f"phase {old} -> {phase} is not in phases.NEXT")
            self._note(f"unexpected phase change: {old} -> {phase}")
        self.state.phase = phase
        if save:
            self.keeper.save()

    # -- the daemon ------------------------------------------------------------------------
    def _start_daemon(self) -> None:
        job = self.job
        self._enter(Phase.STARTING, save=False)  # saved as running, or with the failure
        try:
            child = self.child.spawn(job, self._env(job), self.lock.inheritable_fds(), not self.passthrough)
        except (SpawnError, OSError, UserError) as exc:
            if isinstance(exc, OSError) and not isinstance(exc, SpawnError):
                message = f"cannot start {job.command[0]}: {exc.strerror}"
            else:
                message = str(exc)
            self._note(message)
            self._report_ready(message)
            self._after_exit(exc.code if isinstance(exc, SpawnError) else 126, message)
            return
        out, err = self.output.out, self.output.err
        if child.stdout is not None and child.stderr is not None and out is not None and err is not None:
            self.pump.watch(child.stdout, out)
            self.pump.watch(child.stderr, err)
        state = self.state
        state.pid, state.pid_start = child.pid, self.seams.start_time(child.pid)
        state.started_at = iso(self.seams.wall())
        state.next_start_at = None
        state.backoff_seconds = 0.0  # the message stays: a hint about the last exit still holds
        self._enter(Phase.RUNNING)
        self._note(f"started pid {child.pid}: {shell_join(job.command)}")
        self._arm_deadline()
        if self.ready is not None:
            settle = max(0.0, finite(job.settle, 1.0))
            if settle == 0:
                self._report_ready(None)  # started is enough (a cron tick): what follows is the supervisor's
            else:
                self.settle_at = self.child.started + settle

    def _env(self, job: Job) -> dict[str, str]:
        env = daemon_env(job, self.inherit_env)
        if self.guard is not None and self.guard.token is not None:
            from .leases import CLUSTER_ENV, FENCING_TOKEN_ENV

            env[FENCING_TOKEN_ENV] = str(self.guard.token)
            env[CLUSTER_ENV] = job.cluster  # `lease check NAME --token ...` asks this database
        return env

    def _arm_deadline(self) -> None:
        """A periodic run's timeout (once per slot), or a daemon's --max-lifetime."""
        now = self.seams.clock()
        if self.periodic is not None:
            if self.periodic.on_start(self.state.pid):
                self.deadline = now + self.job.run_timeout
                for text in self.periodic.notes:
                    self._note(text)
                self.output.note_out(self.periodic.notes[-1])  # where the run's output begins
        else:
            self.deadline = now + self.job.max_lifetime if self.job.max_lifetime > 0 else None

    def _reload(self) -> None:
        """SIGUSR2 (install or apply changed the definition): take the new settings that need no
        restart (schedule, grace, timeouts, backoff, log sizes and files) without one."""
        if self.adhoc:
            return
        try:
            new = self.seams.load_job(self.store.root, self.job.name)
        except UserError as exc:
            self._note(f"cannot re-read the definition: {exc}")
            return
        if new is None or new.needs_restart_from(self.job):
            return  # uninstalled, or a change that needs a restart: install and apply do that
        old = self.job
        try:
            self.output.take(old, new, self.pump)
        except OSError as exc:
            self._note(f"cannot re-read the definition: {exc}")
            return
        self.job = self.restarts.job = new
        if self.lease is not None:
            self.lease.job = new
        self.state.stdout_log, self.state.stderr_log = new.stdout_log, new.stderr_log
        if self.periodic is not None and (new.every, new.schedule, new.catch_up) != (old.every, old.schedule,
                                                                                      old.catch_up):
            self.periodic = self._plan(new)
            if self.child.pid is None:
                self._wait_for(self.periodic.runs.first_due())
        if self.child.pid is not None and self.periodic is None:
            self.deadline = self.child.started + new.max_lifetime if new.max_lifetime > 0 else None
        self._note("re-read its definition: new settings in force")
        self.keeper.save()

    def _report_ready(self, problem: Optional[str]) -> None:
        """Tell whoever waits for the start (install, start, run --detach) how it went, once."""
        self.settle_at = None
        if self.ready is not None:
            ready, self.ready = self.ready, None
            ready(problem)

    # -- exits -----------------------------------------------------------------------------
    def _reap(self) -> None:
        """Reap every exited child, ours or adopted; act on what became of the daemon."""
        for what in self.child.reaped(self.job, self.duplicate, self.stopping or bool(self.ending)):
            if isinstance(what, Follow):
                if what.pid != self.state.pid:
                    self._note(f"following pid {what.pid} ({what.count} process(es) in the background)")
                self.state.pid, self.state.pid_start = what.pid, what.start
                self.state.message = ""
                self._enter(Phase.RUNNING)
            else:
                self._on_exit(what)

    def _on_exit(self, what: Exit) -> None:
        if what.pid:  # else the tree a forking command left is gone: no exit of ours to tell
            followed = " (of the tree it left)" if what.followed else ""
            self._note(f"pid {what.pid}{followed} {procs.exit_text(what.code)} after {what.lasted:.1f} s")
            if self.duplicate:
                return  # stepping down: the job's tree and state belong to the other supervisor
        message, left = "", what.left
        if left:
            if what.code == 0:
                processes = "process" if len(left) == 1 else "processes"
                message = (f"exited 0 leaving {len(left)} {processes}: if it daemonizes itself, install it "
                           "with --forking or run it in the foreground")
                self._note(message)
            # Like systemd's KillMode=control-group: what the daemon left behind goes with it.
            self._stop_tree(f"stopping {len(left)} leftover process(es) of the daemon's tree", leftovers=True)
        self._after_exit(what.code, message, what.lasted)

    def _after_exit(self, code: int, message: str, lasted: float = 0.0) -> None:
        job, state = self.job, self.state
        self.child.pid = None
        self.child.following = False  # forking: the tree is gone, and this is its one exit
        state.last_exit_code = code
        state.last_exit_at = iso(self.seams.wall())
        state.pid = state.pid_start = None
        state.message = message
        ending, self.ending = self.ending, None
        if self.periodic is not None:
            self._after_periodic_run(self.periodic, code, message, ending == TIMEOUT)
            return
        self._lease_run_ended()
        if self.settle_at is not None:
            log = "" if self.passthrough else f"; see {job.stderr_log}"
            detail = f" ({message})" if message else ""
            self._report_ready(f"{job.name} {procs.exit_text(code)} {lasted:.1f} s after it started{detail}{log}")
        now = self.seams.clock()
        decision = self.restarts.after_exit(code, lasted, now, lifetime=ending == LIFETIME, stopping=self.stopping)
        if isinstance(decision, Done):
            self.done_code = decision.code
            self._enter(Phase.EXITED)
            return
        delay = decision.delay
        self.next_start = decision.at
        state.restarts += 1
        state.backoff_seconds = delay
        state.next_start_at = iso(self.seams.wall() + delay)
        if delay:
            backoff = f"{decision.quick_runs} quick exits in a row: next start in {delay:g} s"
            state.message = f"{message}; {backoff}" if message else backoff
            self._note(f"restart in {delay:g} s ({decision.quick_runs} runs shorter than {job.min_uptime:g} s "
                       "in a row)")
            notify.job_event(job, "backoff", code, state.message, self._note, self.inherit_env)
        self._enter(Phase.BACKOFF if delay else Phase.STARTING)

    def _after_periodic_run(self, plan: PeriodicPlan, code: int, message: str, timed_out: bool) -> None:
        if plan.again(code, timed_out, self.stopping, self.job.loop):
            self.next_start = self.seams.clock()  # PanDA's loop mode: again at once, within the period
            self._enter(Phase.STARTING, save=False)
            return
        self._lease_run_ended()
        decision = plan.after_run(code, timed_out, self.stopping)
        self.deadline = None
        self.state.message = message
        for text in plan.notes:
            self._note(text)
        notify.job_event(self.job, plan.event, code, plan.notes[-1], self._note, self.inherit_env)
        if isinstance(decision, Done):
            self.done_code = decision.code
            self.state.next_due_at = None
            self._enter(Phase.EXITED)
            return
        self._wait_for(decision.due)
        self.keeper.save()

    def _wait_for(self, due: float) -> None:
        """Start the next periodic run at `due` (on the periodic clock), plus a fresh jitter."""
        assert self.periodic is not None
        delay = self.periodic.delay_to(due)
        self.next_start = self.seams.clock() + delay
        self.state.next_due_at = self.periodic.runs.when(due)
        if delay > 0:
            self._enter(Phase.WAITING)

    # -- the cluster lease -----------------------------------------------------------------
    def _ask_lease(self, now: float) -> bool:
        """Before a start: hold NAME's cluster lease (True), or act on why not."""
        lease = self.lease
        assert lease is not None
        decision = lease.before_start(now, iso(self.seams.wall()), self.periodic, self.stopping)
        if lease.lost is not None:
            self._lease_lost(lease.lost)
        for text in lease.notes:
            self._note(text)
        if isinstance(decision, Go):
            return True
        if isinstance(decision, NextDue):  # WaitUntil
            self._wait_for(decision.due)
        elif isinstance(decision, Standby):
            self.next_start = decision.at
            self._enter(Phase.STANDBY, save=False)
            self._report_ready(decision.report)
        elif isinstance(decision, Done):
            self.done_code = decision.code
            self._enter(Phase.STANDBY, save=False)
            self._report_ready(decision.report)
            if self.passthrough:
                self.seams.stderr(f"{self.job.name} not started here: {lease.said}")
        self.keeper.save()
        return False

    def _lease_tick(self, lease: LeaseGate) -> None:
        """Renew inline (tests), note a renew problem once, and stop the tree once the lease is lost."""
        news = lease.on_tick()
        for text in news.notes:
            self._note(text)
        if news.changed:
            self.keeper.save()
        if news.lost is None:
            return
        self._lease_lost(news.lost)
        if self.child.pid is not None:
            self.ending = LEASE
            self._stop_tree("the cluster lease was lost: stopping the tree before another host may start",
                            leftovers=True)
        self.keeper.save()

    def _lease_lost(self, lost: str) -> None:
        self._note(lost)
        notify.job_event(self.job, "lease-lost", self.state.last_exit_code, lost, self._note, self.inherit_env)

    def _lease_run_ended(self) -> None:
        said = self.lease.run_ended() if self.lease is not None else None
        if said:
            self._note(said)

    # -- stopping ----------------------------------------------------------------------------
    def _end_run_ourselves(self) -> None:
        """A periodic run past its timeout, or a daemon past its --max-lifetime: stop its tree
        (SIGTERM, grace, SIGKILL), and record why."""
        self.deadline = None
        if self.periodic is not None:
            self.ending, why = TIMEOUT, f"run timed out after {self.job.run_timeout:g} s"
        else:
            self.ending, why = LIFETIME, f"--max-lifetime {self.job.max_lifetime:g} s reached: restarting it"
        self._stop_tree(why, leftovers=True)  # which logs `why` once

    def _stop_tree(self, why: str, leftovers: bool = False) -> None:
        self.state.pid = self.state.pid_start = None
        self._enter(Phase.STOPPING)

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
        survivors = self.child.stop(self.job, wait, say)
        if survivors:
            self._note(f"pids {sorted(survivors)} survived SIGKILL (stuck in the kernel?)")
        self.pump.drain_all()
        if not leftovers:
            self._enter(Phase.STOPPED if self.stopping else Phase.EXITED)

    def _note(self, text: str) -> None:
        self.output.note(text)
