"""What the supervisor decides, apart from what it does: small objects that take what happened and
return what to do, and touch no process, clock or file of their own.

    policy = RestartPolicy(job)
    policy.after_exit(code=1, lasted=0.2, now=clock())     # -> RestartAt(at, delay) | Done(code)
    plan = PeriodicPlan(PeriodicRuns(job, state, wall, clock))
    plan.again(code, timed_out, stopping, loop) or plan.after_run(code, timed_out, stopping)  # NextDue | Done
    gate = LeaseGate(job, state, guard)
    gate.before_start(now, plan, stopping)                 # -> Go() | WaitUntil(due) | Standby(at) | Done(code)
    gate.on_tick()                                         # -> LeaseNews(notes, changed, lost)

The supervisor (supervisor.py) turns each answer into actions: spawn, stop the tree, save, note.
`PeriodicRuns` (periodic.py) and the guard (leases/guard.py) keep the record and talk to the
database; the objects here only read and update the run state's fields they own.
"""

from __future__ import annotations

import math

from .notify import RESULT_EVENTS

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing stays out of the resident supervisor's memory; annotations are strings
    from typing import Callable, Optional, Union

    from .jobs import Job
    from .leases import ClusterLease
    from .leases.guard import ClusterGuard
    from .periodic import PeriodicRuns
    from .state import RunState

BURST = 3  # quick runs in a row restarted at once; backoff begins with the next


def finite(value: float, default: float) -> float:
    return value if math.isfinite(value) else default


def restart_delay(job: Job, quick_runs: int) -> float:
    """0 for the first BURST quick runs in a row, then initial, 2x initial, ... up to max."""
    if quick_runs < BURST:
        return 0.0
    initial = max(0.1, finite(job.backoff_initial, 1.0))
    longest = max(initial, finite(job.backoff_max, 60.0))
    return min(longest, initial * 2.0 ** min(quick_runs - BURST, 40))


class Decision:
    __slots__: tuple[str, ...] = ()

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and all(getattr(self, k) == getattr(other, k) for k in self.__slots__)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={getattr(self, k)!r}' for k in self.__slots__)})"


class Done(Decision):
    """Start no more: the supervisor ends with `code`; `report` is for whoever waits for the start."""
    __slots__ = ("code", "report")

    def __init__(self, code: int, report: Optional[str] = None) -> None:
        self.code, self.report = code, report


class RestartAt(Decision):
    """Start again at `at` (the supervisor's clock), `delay` seconds from now."""
    __slots__ = ("at", "delay", "quick_runs")

    def __init__(self, at: float, delay: float, quick_runs: int) -> None:
        self.at, self.delay, self.quick_runs = at, delay, quick_runs


class NextDue(Decision):
    """Start the next run at `due` (the periodic clock)."""
    __slots__ = ("due",)

    def __init__(self, due: float) -> None:
        self.due = due


class Go(Decision):
    """The lease is ours: start."""
    __slots__ = ()


class WaitUntil(NextDue):
    """Not ours this time: ask again at the next due time."""
    __slots__ = ()


class Standby(Decision):
    """Another host runs it: ask again at `at`; `report` is for whoever waits for the start."""
    __slots__ = ("at", "report")

    def __init__(self, at: float, report: str) -> None:
        self.at, self.report = at, report


class RestartPolicy:
    """--restart with the backoff of quick exits: after each exit of a daemon kept alive, start it
    again (at once, or after a pause once BURST quick runs came in a row), or be done."""

    def __init__(self, job: Job) -> None:
        self.job = job  # replaced when the definition is re-read; the count goes on
        self.quick_runs = 0

    def after_exit(self, code: int, lasted: float, now: float, *, lifetime: bool = False,
                   stopping: bool = False) -> Union[RestartAt, Done]:
        """`lifetime`: we ended it at --max-lifetime (never a quick run); `stopping`: a stop is under way."""
        job = self.job
        if stopping or job.restart == "never" or (job.restart == "on-failure" and code == 0):
            return Done(code)
        quick = lasted < finite(job.min_uptime, 1.0) and not lifetime
        self.quick_runs = self.quick_runs + 1 if quick else 0
        delay = restart_delay(job, self.quick_runs)
        return RestartAt(now + delay, delay, self.quick_runs)


class PeriodicPlan:
    """A periodic job's next step after each event, over `PeriodicRuns` (the due times and the
    record). `notes` collects what the last call has to say in the job's log."""

    def __init__(self, runs: PeriodicRuns) -> None:
        self.runs = runs
        self.notes: list[str] = []
        self.event = ""  # the notify event of the run that just ended ("" for none)

    @staticmethod
    def of(job: Job, state: RunState, wall: Callable[[], float], clock: Callable[[], float]) -> PeriodicPlan:
        from .periodic import PeriodicRuns  # imported only here: a daemon kept alive does not load it

        return PeriodicPlan(PeriodicRuns(job, state, wall, clock))

    def delay_to(self, due: float) -> float:
        """Seconds until the run due at `due` starts, plus a fresh jitter: never early. A run due
        already because the last one outlasted its period starts at once, with no jitter."""
        runs = self.runs
        runs.due = due
        return max(0.0, due - runs.now()) + (0.0 if runs.overran else runs.jitter())

    def on_start(self, pid: Optional[int]) -> bool:
        """A run started: True when it begins a slot (arm its timeout); False for a loop's rerun."""
        runs = self.runs
        assert runs.due is not None
        self.notes = []
        if runs.started_at is not None and runs.loops != 0:
            runs.loops += 1  # loop mode: the same slot, its deadline unchanged
            return False
        late = runs.started(runs.due)
        if late is not None:
            self.notes.append(late)
        self.notes.append(f"run due {runs.when(runs.due)} started (pid {pid})")
        return True

    def again(self, code: int, timed_out: bool, stopping: bool, loop: bool) -> bool:
        """A run ended: True when loop mode starts it again at once, within the same period (PanDA's)."""
        runs = self.runs
        if runs.started_at is None:  # it could not even start: still a run that failed
            runs.started(runs.due if runs.due is not None else runs.now())
        return not timed_out and code == 0 and loop and not stopping and runs.now() < runs.slot_end()

    def after_run(self, code: int, timed_out: bool, stopping: bool) -> Union[NextDue, Done]:
        """A run ended for good (not `again`): record it; then the next due time, or done."""
        runs = self.runs
        self.notes, self.event = [], ""
        result, skipped = runs.finished(code, timed_out, stopped=stopping)
        runs.started_at = None
        runs.loops = 0
        if skipped:
            self.notes.append(f"the run outlasted its period: {skipped} due time(s) skipped")
        self.notes.append(f"run due {runs.when(runs.due or 0)}: {result}" + (f" (code {code})" if result == "failed"
                                                                                else ""))
        self.event = RESULT_EVENTS.get(result, "")
        due = None if stopping else runs.next_due()
        if due is None:
            return Done(code if not timed_out else 124)  # timeout(1)'s code
        return NextDue(due)


class LeaseNews(Decision):
    """What a lease tick found: lines for the log, whether the state changed, and a lost lease."""
    __slots__ = ("notes", "changed", "lost")

    def __init__(self, notes: list[str], changed: bool = False, lost: Optional[str] = None) -> None:
        self.notes, self.changed, self.lost = notes, changed, lost


class LeaseGate:
    """A cluster job's lease around each run: held before a start (or why not, and what next),
    watched while the run goes on, given back after a sync or rotate run. It writes the run
    state's lease fields; the guard talks to the database."""

    def __init__(self, job: Job, state: RunState, guard: ClusterGuard) -> None:
        self.job = job
        self.state = state
        self.guard = guard
        self.said = ""  # the last lease problem written to the log (each is written once)
        self.notes: list[str] = []  # what the last `before_start` has to say in the log
        self.lost: Optional[str] = None  # set by `before_start` when it found the lease lost

    @staticmethod
    def open(job: Job, state: RunState, cluster: ClusterLease, wake: Callable[[], None],
             clock: Optional[Callable[[], float]] = None, threaded: bool = True) -> LeaseGate:
        """The gate of `cluster`'s lease for `job`; `wake` wakes the supervisor (the renew thread's
        news), `clock` is the lease's (CLOCK_BOOTTIME unless a test passes its own)."""
        from .leases import Timing
        from .leases.guard import ClusterGuard
        from .leases.keeper import boottime

        guard = ClusterGuard(job, cluster, Timing.for_lease(job.lease), wake, clock=clock or boottime,
                             threaded=threaded)
        return LeaseGate(job, state, guard)

    def before_start(self, now: float, checked_at: str, plan: Optional[PeriodicPlan],
                     stopping: bool) -> Union[Go, WaitUntil, Standby, Done]:
        """Before a start: hold NAME's cluster lease, or say why not and decide what comes next (wait
        for the next due time, retry as a standby, or leave). `checked_at`: now, as the state shows it."""
        guard, state, job = self.guard, self.state, self.job
        self.notes, self.lost = [], None
        if guard.keeper.grant is not None and guard.lost():
            # Stopped (SIGSTOP) past the give-up deadline: the watcher ended the tree meanwhile.
            self.lost = self.forget()
        gate = guard.gate()
        state.lease_checked_at = checked_at if not gate.unreachable else state.lease_checked_at
        if gate.go:
            if state.lease_token != guard.token or state.lease_role != "holder":
                self.notes.append(f"holding the cluster lease of {job.name}: token {guard.token}")
            state.lease_role, state.lease_token, state.lease_holder = "holder", guard.token, ""
            state.lease_problem = self.said = ""
            guard.start_renewing()
            return Go()
        state.lease_role, state.lease_token, state.lease_holder = "standby", None, gate.holder
        state.lease_problem = gate.why if gate.unreachable else ""
        if gate.why != self.said:
            self.said = gate.why
            self.notes.append(f"not started here: {gate.why}")
        if plan is not None and gate.taken:
            plan.runs.skipped_slot(gate.why)  # sync: this period's run is another host's
        due = plan.runs.next_due() if plan is not None and not stopping else None
        if due is not None:
            return WaitUntil(due)  # the supervisor keeps the due times: ask again at the next
        if job.standby and plan is None:
            return Standby(now + guard.timing.retry, f"ok standby {job.name}: {gate.why}: standing by")
        # Leave: the next tick asks again. An unreachable database is a failure for a manual run
        # (exit 1, on stderr) and a quiet exit from cron (its log and status say it).
        said = f"{job.name} not started here: {gate.why}"
        return Done(1 if gate.unreachable else 0, f"unavailable {said}" if gate.unreachable else f"ok standby {said}")

    def on_tick(self) -> LeaseNews:
        """Renew inline (tests), note a renew problem once, and say when the lease is lost."""
        guard = self.guard
        guard.tick()
        problem = guard.keeper.problem
        if guard.keeper.grant is None:
            return LeaseNews([])
        news = LeaseNews([])
        if problem != self.said:
            if problem:
                news.notes.append(f"cluster lease: {problem}")
            elif self.said:
                news.notes.append("cluster lease: renewed again")
            self.said = self.state.lease_problem = problem
            news.changed = True
        if guard.lost():
            news.lost = self.forget()
        return news

    def forget(self) -> str:
        """The lease is lost: forget our grant; returns what to log."""
        problem = self.guard.keeper.problem
        self.guard.forget()
        self.state.lease_role, self.state.lease_token = "", None
        return f"lost the cluster lease of {self.job.name} ({problem or 'expired'})"

    def run_ended(self) -> Optional[str]:
        """A run ended: a sync or rotate job gives the lease back; returns what to log, if anything."""
        if not (self.job.sync or self.job.rotate):
            return None
        turn = self.guard.run_ended()
        self.state.lease_role, self.state.lease_token = "", None
        return f"the turn passes to {turn}" if turn is not None else None
