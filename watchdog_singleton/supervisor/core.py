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

This module is the loop: signals and wake-ups (`proc.children.Wakeups`, the child-process loop
the farm runs on too), the output pump, the lock watch (`lockwatch`), the state file's healing,
re-reading the definition. What happens to the daemon is its `Lifecycle` (`life`): the phases,
each start and exit, stopping the tree (through `child.Child`). What to do after an exit, a
periodic run or at the lease gate is decided by small objects that touch nothing (`decisions.RestartPolicy`,
`periodic_plan.PeriodicPlan`, `lease_gate.LeaseGate`). Everything touched of the world
goes through `Seams` (`seams`: clocks, spawn, the process table, reaping, signals,
/proc, the job's definition on disk, folders, log files, stderr), which the fake world replaces.
"""

from __future__ import annotations

import _signal

from ..errors import UserError
from ..job.daemonenv import daemon_env
from ..proc.children import Wakeups
from ..state.phases import Phase
from ..state.store import CARRIED, UNSEEN, RunState, StateKeeper
from .decisions import BURST, restart_delay
from .io import Output
from .life import Lifecycle
from .lockwatch import DUPLICATE, LockWatch
from .pump import OutputPump
from .seams import Seams

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing stays out of the resident supervisor's memory; annotations are strings
    from typing import Any, Callable, Optional

    from ..cluster import ClusterLease
    from ..job.model import Job
    from ..lock.flock import SingletonLock
    from ..lock.supfile import SupervisorFile
    from ..state.store import StateStore
    from .periodic_plan import PeriodicPlan
    from .pump import Pump

    Ready = Callable[[Optional[str]], None]

__all__ = ["BURST", "Seams", "Supervisor", "daemon_env", "first_state", "restart_delay"]
SIGTERM, SIGINT, SIGHUP, SIGUSR2 = _signal.SIGTERM, _signal.SIGINT, _signal.SIGHUP, _signal.SIGUSR2


def first_state(job: Job, seams: Seams, adhoc: bool, history: Optional[dict[str, Any]]) -> RunState:
    """A new supervisor's run state: starting, with the history of the supervisors before it."""
    state = RunState(name=job.name, phase=Phase.STARTING, boot_id=seams.boot_id(), supervisor_pid=seams.pid,
                     supervisor_start=seams.start_time(seams.pid), command=job.command, lock_path=job.lock_path,
                     stdout_log=job.stdout_log, stderr_log=job.stderr_log, adhoc=adhoc)
    for key in CARRIED:  # the history goes on across supervisors
        if history and key in history:
            setattr(state, key, history[key])
    return state


class Supervisor:
    """The resident loop: signals, wake-ups, the output pump, the lock watch, the state file's
    healing, re-reading the definition; what happens to the daemon is its `Lifecycle`'s."""

    # Set up by `run`, which owns the signals' wake-up pipe they need.
    pump: Pump
    wait: Callable[[float], None]
    watch: LockWatch

    def __init__(self, job: Job, lock: SingletonLock, store: StateStore, *,
                 adhoc: bool = False, passthrough: bool = False,
                 inherit_env: Optional[dict[str, str]] = None, ready: Optional[Ready] = None,
                 history: Optional[dict[str, Any]] = None, seams: Optional[Seams] = None,
                 cluster: Optional[ClusterLease] = None, wakeups: Optional[Wakeups] = None,
                 house: str = "", note: str = "", supfile: Optional[SupervisorFile] = None) -> None:
        self.lock = lock
        self.supfile = supfile  # a job's own supervisor's `PID START` file, held (lock/supfile.py)
        self.store = store
        self.adhoc = adhoc
        seams = self.seams = seams or Seams()
        self.state = first_state(job, seams, adhoc, history)
        self.state.house = house  # the shared resident's socket: it supervises this job among others
        self.output = Output(passthrough, seams.open_sink)
        if history and history.get(UNSEEN):
            self.output.note(str(history[UNSEEN]))  # its daemon's end in the gap before us
        self.keeper = StateKeeper(store, self.state, self.output.note)
        # Claim the job before anything else: a launcher that finds a fresh lock file (the old
        # one deleted) sees this live supervisor and leaves.
        self.keeper.save()
        self.wakeups = wakeups or Wakeups((SIGTERM, SIGINT, SIGHUP, SIGUSR2))  # the shared resident's, opened by it
        self._healed_at = 0.0
        self.life = Lifecycle(job, self.state, self.keeper, self.output, seams, fds=lock.inheritable_fds,
                              wake=self.wakeups.wake, passthrough=passthrough, inherit_env=inherit_env, ready=ready,
                              cluster=cluster)
        self.guard = self.life.guard
        self.first_note = note  # written to the log once it is open (the tick's word on why we run)

    @property
    def job(self) -> Job:
        return self.life.job

    @property
    def periodic(self) -> Optional[PeriodicPlan]:
        return self.life.periodic

    def request_stop(self) -> None:
        self.life.stopping = True

    # -- main loop -------------------------------------------------------------------------
    def run(self, opened: Optional[Callable[[], None]] = None) -> int:
        """The loop, until the end; `opened` runs once the pump and logs are open (an adoption)."""
        self.open(OutputPump(self.wakeups.open(), self.seams.clock))
        try:
            if opened is not None:
                opened()
            while True:
                self._handle_events()
                if self.over():
                    break
                now = self.seams.clock()
                if self.step(now):
                    continue
                self.wait(max(0.0, self.wake_at(now) - now))
            return self.finish()
        finally:
            self.close()
            self.wakeups.close()

    # -- the pieces of the loop, which the shared resident (house.py) drives for each of its jobs --
    def open(self, pump: Pump) -> None:
        """Ready to run: where the daemon's output goes, the log files, the lock watch."""
        life = self.life
        self.pump = life.pump = pump
        self.wait = self.seams.wait or self.pump.wait
        self.output.open(life.job, self.wakeups.wake)
        if self.first_note:
            self.output.note(self.first_note)
        self.watch = LockWatch(self.lock, self.output.note, self.seams.clock())
        life.begin()

    def over(self) -> bool:
        """Whether the loop ends: a stop was asked for, a duplicate steps down, or the daemon is done."""
        life = self.life
        return life.stopping or life.duplicate or life.done_code is not None

    def step(self, now: float) -> bool:
        """One turn at `now`: start the daemon if its start is due (True: look again before
        waiting), else the timed chores."""
        life = self.life
        if life.child.pid is None and now >= life.next_start and life.child.aside_until is None:
            life.start_due(now)
            return True
        self._tick(now)
        return False

    def close(self) -> None:
        """After `finish`, or on the way out of an error: the pipes, the logs, the lease, the lock."""
        try:
            self.pump.close()
            self.output.close()
            if self.guard is not None:
                self.guard.close()  # after the tree is gone: a standby may take over at once
        finally:
            self.lock.release()
            if self.supfile is not None:
                self.supfile.release()  # after the lock: a tick that finds it free finds the lock free too

    def _tick(self, now: float) -> None:
        """The timed chores: the run's (readiness, deadlines, the lease), the lock watch, a failed
        state write."""
        self.life.tick(now)
        if self.watch.due(now):
            if self.supfile is not None:
                self.supfile.look()  # deleted by a /tmp cleaner: put back, as the lock is
            if self.watch.check(now) == DUPLICATE:
                self.life.duplicate = True
        if not self.life.duplicate and (self.keeper.error is not None or self.watch.next_check != self._healed_at):
            self._healed_at = self.watch.next_check  # once per lock check, or every wake while failing
            self.keeper.heal()

    def wake_at(self, now: float) -> float:
        times = [self.watch.next_check, *self.life.wake_times(now)]
        if self.keeper.error is not None:
            times.append(now + StateKeeper.RETRY_SECONDS)
        held = self.pump.next_wake(now)
        if held is not None:
            times.append(held)
        return min(times)

    def finish(self) -> int:
        if self.life.duplicate:
            # A duplicate steps down: only its own descendants go, and the state is not ours to write.
            self.life.child.step_down(self.life.job)
            self.pump.drain_all()
            return 0
        code = self.life.finish()
        if self.adhoc:
            self.store.delete(self.state.name)  # an ad-hoc row lives as long as its run
        return code

    def _handle_events(self) -> None:
        for sig in self.wakeups.take():
            if sig in (SIGTERM, SIGINT):
                self.life.stopping = True
            elif sig == SIGHUP:  # files moved or deleted (logrotate, a /tmp cleaner): look again
                self.output.reopen()
                self.watch.soon()
            elif sig == SIGUSR2:
                self.reload()
        self.life.reap()

    def reload(self) -> None:
        """SIGUSR2 (install or apply changed the definition): take the new settings that need no
        restart without one."""
        if self.adhoc:
            return
        try:
            new = self.seams.load_job(self.store.root, self.job.name)
        except UserError as exc:
            self.output.note(f"cannot re-read the definition: {exc}")
            return
        if new is None or new.needs_restart_from(self.job):
            return  # uninstalled, or a change that needs a restart: install and apply do that
        try:
            self.output.take(self.job, new, self.pump)  # new log files, or new sizes
        except OSError as exc:
            self.output.note(f"cannot re-read the definition: {exc}")
            return
        self.life.reload(new)
