"""What happens to the daemon of one supervised job, from start to end: its phases, each start,
each exit and what follows it, the cluster lease around each run, and stopping its tree.

    life = Lifecycle(job, state, keeper, output, seams, fds=lock.inheritable_fds, wake=wakeups.wake)
    life.pump = pump                     # the daemon's output goes there
    life.begin()                         # a periodic job waits for its first due time
    if life.child.pid is None and now >= life.next_start:
        life.start_due(now)              # the lease gate (cluster jobs), then spawn
    life.tick(now); life.reap()          # deadlines, the lease; exits, and what comes after
    code = life.finish()                 # stop the tree; the exit code for the supervisor

The supervisor's loop (supervisor.py) owns the process side: signals, the wake-ups, the lock
watch, the state file's healing, re-reading the definition. This object owns the run: the phase
changes in one place (`enter`, checked against phases.NEXT), and what to do after an exit, a
periodic run or at the lease gate is asked of the decision objects (decisions), whose
answers it turns into actions: spawn, stop the tree, save, note, notify. A cluster job's lease
answers are turned into actions by `lease_gate.LeaseReactions`, loaded for cluster jobs only.
"""

from __future__ import annotations

from ..errors import SIGNALLED, UserError
from ..job import notify
from ..job.daemonenv import daemon_env
from ..proc import procs
from ..proc.spawn import SpawnError
from ..quoting import shell_join
from ..state.phases import Phase, allowed
from ..timefmt import iso
from .child import Child, Exit, Follow, exit_report, pipe_inode, start_failure
from .decisions import DONE, LIFETIME, TIMEOUT, RestartPolicy, finite

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing stays out of the resident supervisor's memory; annotations are strings
    from typing import Callable, Optional

    from ..cluster import ClusterLease
    from ..job.model import Job
    from ..state.store import RunState, StateKeeper
    from .io import Output
    from .lease_gate import LeaseGate, LeaseReactions
    from .periodic_plan import PeriodicPlan
    from .pump import Pump
    from .seams import Seams

    Ready = Callable[[Optional[str]], None]


class Lifecycle:
    pump: Pump  # set by the supervisor's loop, which owns the wake-up pipe it polls

    def __init__(self, job: Job, state: RunState, keeper: StateKeeper, output: Output, seams: Seams, *,
                 fds: Callable[[], tuple[int, ...]], wake: Callable[[], None], passthrough: bool = False,
                 inherit_env: Optional[dict[str, str]] = None, ready: Optional[Ready] = None,
                 cluster: Optional[ClusterLease] = None) -> None:
        self.job = job
        self.state = state
        self.keeper = keeper
        self.output = output
        self.seams = seams
        self.fds = fds  # the lock's descriptors, which the daemon inherits
        self.passthrough = passthrough
        self.inherit_env = inherit_env
        self.ready = ready
        self.child = Child(seams, self.reap)  # the daemon's tree
        self.settle_at: Optional[float] = None
        self.next_start = 0.0
        self.stopping = False  # a stop was asked for (SIGTERM, SIGINT)
        self.duplicate = False  # another supervisor holds the job's lock: step down
        self.done_code: Optional[int] = None
        self.restarts = RestartPolicy(job)
        # A periodic job's due times and record; None for a daemon kept alive.
        self.periodic: Optional[PeriodicPlan] = self._plan(job) if job.periodic else None
        self.deadline: Optional[float] = None  # the running command's timeout or max lifetime
        self.ending: Optional[str] = None  # TIMEOUT, LIFETIME or LEASE while we end the run ourselves
        # A cluster job's lease: asked for before each start, renewed while it runs (leases/guard).
        self.lease: Optional[LeaseGate] = None
        self.leased: Optional[LeaseReactions] = None  # what this run does about the gate's answers
        if cluster is not None:  # imported only here, as the periodic plan: a plain daemon does not load them
            from .lease_gate import LeaseGate, LeaseReactions

            self.lease = LeaseGate.open(job, state, cluster, wake, seams.lease_clock, seams.threads)
            self.leased = LeaseReactions(self, self.lease)
        self.guard = self.lease.guard if self.lease is not None else None

    # -- what the loop asks ------------------------------------------------------------------
    def begin(self) -> None:
        """A periodic job waits for its first due time (the loop's first turn starts it if due)."""
        if self.periodic is None:
            return
        runs = self.periodic.runs
        self._wait_for(runs.first_due())
        if runs.note_catch_up is not None:
            self._note(f"due time {runs.when(runs.note_catch_up)} was missed: one make-up run now")
        if not runs.once:
            self._report_ready(None)  # the supervisor keeps the due times: it runs now

    def start_due(self, now: float) -> None:
        """The start is due: ask for the lease (a cluster job), then start."""
        if self.leased is None or self.leased.ask(now):
            self._start_daemon()

    def tick(self, now: float) -> None:
        """The run's timed chores: readiness after the settle time, a run's timeout or lifetime, the lease."""
        if self.settle_at is not None and now >= self.settle_at:
            self._report_ready(None)
        if self.deadline is not None and now >= self.deadline and self.child.pid is not None:
            self._end_run_ourselves()
        if self.leased is not None:
            self.leased.tick()

    def wake_times(self, now: float) -> list[float]:
        times = []
        if self.child.pid is None and self.child.aside_until is None:  # no start while a stop runs beside
            times.append(self.next_start)
        elif self.deadline is not None and self.child.pid is not None:
            times.append(self.deadline)
        if self.settle_at is not None:
            times.append(self.settle_at)
        look = self.guard.seconds_to_look() if self.guard is not None else None
        if look is not None:
            times.append(now + look)
        return times

    def reload(self, new: Job) -> None:
        """A re-read definition whose changes need no restart (schedule, grace, timeouts, backoff,
        log sizes and files): in force now."""
        old = self.job
        self.job = self.restarts.job = new
        if self.lease is not None:
            self.lease.job = new
        self.state.stdout_log, self.state.stderr_log = new.stdout_log, new.stderr_log
        if self.periodic is not None and (new.every, new.schedule, new.catch_up) != (old.every, old.schedule,
                                                                                      old.catch_up):
            self.periodic = self._plan(new)
            if self.child.pid is None:
                self._wait_for(self.periodic.runs.first_due())
        if self.child.pid is not None and self.periodic is None and self.child.aside_until is None:
            self.deadline = self.child.started + new.max_lifetime if new.max_lifetime > 0 else None
        self._note("re-read its definition: new settings in force")
        self.keeper.save()

    def finish(self) -> int:
        """The loop ends: stop the tree, tell whoever waits; the supervisor's exit code."""
        if self.state.phase == Phase.STANDBY and self.child.pid is None:
            self.keeper.save()  # the cluster lease is another host's: nothing of ours ran
        else:
            self._stop_tree("stopping: " + ("signal received" if self.stopping else "daemon done"))
        self._report_ready(None)
        code = self.done_code if self.done_code is not None else 0
        return SIGNALLED - code if code < 0 else code  # killed by signal N: exit 128+N, as shells do

    def enter(self, phase: str, save: bool = True) -> None:
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
        self.enter(Phase.STARTING, save=False)  # saved as running, or with the failure
        try:
            token = self.guard.token if self.guard is not None else None
            child = self.child.spawn(job, daemon_env(job, self.inherit_env, token), self.fds(), not self.passthrough)
        except (SpawnError, OSError, UserError) as exc:
            code, message = start_failure(job, exc)
            self._note(message)
            self._report_ready(message)
            self._after_exit(code, message)
            return
        out, err = self.output.out, self.output.err
        if child.stdout is not None and child.stderr is not None and out is not None and err is not None:
            self.pump.watch(child.stdout, out)
            self.pump.watch(child.stderr, err)
        state = self.state
        state.pid, state.pid_start = child.pid, self.seams.start_time(child.pid)
        state.stdout_pipe, state.stderr_pipe = pipe_inode(child.stdout), pipe_inode(child.stderr)
        state.started_at, state.next_start_at = iso(self.seams.wall()), None
        state.backoff_seconds = 0.0  # the message stays: a hint about the last exit still holds
        self.enter(Phase.RUNNING)
        self._note(f"started pid {child.pid}: {shell_join(job.command)}")
        self._arm_deadline()
        if self.ready is not None:
            settle = max(0.0, finite(job.settle, 1.0))
            if settle == 0:
                self._report_ready(None)  # started is enough (a cron tick): what follows is the supervisor's
            else:
                self.settle_at = self.child.started + settle

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

    def _report_ready(self, problem: Optional[str]) -> None:
        """Tell whoever waits for the start (install, start, run --detach) how it went, once."""
        self.settle_at = None
        if self.ready is not None:
            ready, self.ready = self.ready, None
            ready(problem)

    # -- exits -----------------------------------------------------------------------------
    def reap(self) -> None:
        """Reap every exited child, ours or adopted; act on what became of the daemon."""
        for what in self.child.reaped(self.job, self.duplicate, self.stopping or bool(self.ending)):
            if isinstance(what, Follow):
                if what.pid != self.state.pid:
                    self._note(f"following pid {what.pid} ({what.count} process(es) in the background)")
                self.state.pid, self.state.pid_start = what.pid, what.start
                self.state.message = ""
                self.enter(Phase.RUNNING)
            else:
                self._on_exit(what)

    def _on_exit(self, what: Exit) -> None:
        if what.pid:  # else the tree a forking command left is gone: no exit of ours to tell
            followed = " (of the tree it left)" if what.followed else ""
            self._note(f"pid {what.pid}{followed} {procs.exit_text(what.code)} after {what.lasted:.1f} s")
            if self.duplicate:
                return  # stepping down: the job's tree and state belong to the other supervisor
        message, left = what.hint(), what.left
        if message:
            self._note(message)
        def then() -> None:  # now, or once what the daemon left is gone
            self._after_exit(what.code, message, what.lasted)
        if left:  # like systemd's KillMode=control-group: what the daemon left behind goes with it
            return self._stop_tree(f"stopping {len(left)} leftover process(es) of the daemon's tree", True, then)
        then()

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
        if self.leased is not None:
            self.leased.run_ended()
        if self.settle_at is not None:  # it ended within the settle time: the start failed
            self._report_ready(exit_report(job, code, lasted, message, "" if self.passthrough else job.stderr_log))
        now = self.seams.clock()
        decision = self.restarts.after_exit(code, lasted, now, lifetime=ending == LIFETIME, stopping=self.stopping)
        if decision.kind == DONE:
            self.done_code = decision.code
            self.enter(Phase.EXITED)
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
            self._tell("backoff", code, state.message)
        self.enter(Phase.BACKOFF if delay else Phase.STARTING)

    def _after_periodic_run(self, plan: PeriodicPlan, code: int, message: str, timed_out: bool) -> None:
        if plan.again(code, timed_out, self.stopping, self.job.loop):
            self.next_start = self.seams.clock()  # PanDA's loop mode: again at once, within the period
            self.enter(Phase.STARTING, save=False)
            return
        if self.leased is not None:
            self.leased.run_ended()
        decision = plan.after_run(code, timed_out, self.stopping)
        self.deadline = None
        self.state.message = message
        for text in plan.notes:
            self._note(text)
        self._tell(plan.event, code, plan.notes[-1])
        if decision.kind == DONE:
            self.done_code = decision.code
            self.state.next_due_at = None
            self.enter(Phase.EXITED)
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
            self.enter(Phase.WAITING)

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

    def _stop_tree(self, why: str, leftovers: bool = False, then: Optional[Callable[[], None]] = None) -> None:
        self.state.pid = self.state.pid_start = None
        self.enter(Phase.STOPPING)
        # The stop's numbers are told unless we only end what an exited daemon left behind.
        wait, detailed = self.stop_grace(), not leftovers or bool(self.ending)
        if leftovers and self.seams.house and self.guard is None:  # a stop of our own: beside the shared loop
            return self.child.term(self.job, wait, why, detailed, self._note, then)
        self.child.stop(self.job, wait, why, detailed, self._note)
        self.pump.drain_all()
        if not leftovers:
            self.enter(Phase.STOPPED if self.stopping else Phase.EXITED)
        if then is not None:
            then()

    def stop_grace(self) -> float:
        """--grace, capped for a lease holder: its tree must be gone before the lease can pass, even
        if the database goes away in the middle of a stop (every stop fits the stop budget)."""
        return self.job.grace if self.guard is None else self.guard.timing.capped_grace(self.job.grace)

    def _note(self, text: str) -> None:
        self.output.note(text)

    def _plan(self, job: Job) -> PeriodicPlan:
        from .periodic_plan import plan_for  # imported only here: a daemon kept alive does not load it

        return plan_for(job, self.state, self.seams.wall, self.seams.clock)

    def _tell(self, event: str, code: Optional[int], text: str) -> None:
        """Notify the job's hook or mail of `event` (notify decides whether it is due)."""
        notify.job_event(self.job, event, code, text, self._note, self.inherit_env, wall=self.seams.wall)
