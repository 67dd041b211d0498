"""A cluster job's decisions around its lease (the supervisor's part of leases/guard.py), and what
its Lifecycle does about them (`LeaseReactions`): loaded only by the supervisor of a cluster job."""

from __future__ import annotations

from ..state.phases import Phase
from ..timefmt import iso
from .decisions import DONE, GO, LEASE, NEXT_DUE, STANDBY, Decision, Done, Go, NextDue, Standby

INF = float("inf")

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing stays out of the resident supervisor's memory; annotations are strings
    from typing import Callable, Optional

    from ..cluster import ClusterLease
    from ..cluster.guard import ClusterGuard
    from ..job.model import Job
    from ..state.store import RunState
    from .life import Lifecycle
    from .periodic_plan import PeriodicPlan


class LeaseNews:
    """What a lease tick found: lines for the log, whether the state changed, and a lost lease."""
    __slots__ = ("notes", "changed", "lost")

    def __init__(self, notes: list[str], changed: bool = False, lost: Optional[str] = None) -> None:
        self.notes, self.changed, self.lost = notes, changed, lost

    def __repr__(self) -> str:
        return f"LeaseNews({self.notes!r}, changed={self.changed}, lost={self.lost!r})"


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
        from ..cluster import Timing
        from ..cluster.guard import ClusterGuard
        from ..cluster.keeper import boottime

        guard = ClusterGuard(job, cluster, Timing.for_lease(job.lease), wake, clock=clock or boottime,
                             threaded=threaded)
        return LeaseGate(job, state, guard)

    def before_start(self, now: float, checked_at: str, plan: Optional[PeriodicPlan],
                     stopping: bool) -> Decision:
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
            return NextDue(due)  # the supervisor keeps the due times: ask again at the next
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


class LeaseReactions:
    """What a cluster job's Lifecycle does about its gate's answers: start or not (wait, stand by,
    leave), note and tell a lost lease, stop the tree once it is lost. Part of the Lifecycle (it
    acts through the Lifecycle's own steps), kept here so that only a cluster job loads it."""
    __slots__ = ("life", "gate", "asking")

    def __init__(self, life: Lifecycle, gate: LeaseGate) -> None:
        self.life, self.gate = life, gate
        self.asking = False  # the shared resident: the gate's round trips run beside the loop

    def ask(self, now: float) -> bool:
        """Before a start: hold NAME's cluster lease (True), or act on why not. In the shared
        resident, the first call starts the round trips in a thread (guard.ask_beside) and the
        start waits for its answer, which wakes the loop; the call after it acts on that answer."""
        life, gate = self.life, self.gate
        if gate.guard.ask_beside():
            self.asking = True
            life.next_start = INF  # `tick` brings it back when the answer is in
            return False
        self.asking = False
        decision = gate.before_start(now, iso(life.seams.wall()), life.periodic, life.stopping)
        if gate.lost is not None:
            self._lost(gate.lost)
        for text in gate.notes:
            life._note(text)
        if decision.kind == GO:
            return True
        if decision.kind == NEXT_DUE:
            life._wait_for(decision.due)
        elif decision.kind == STANDBY:
            life.next_start = decision.at
            life.enter(Phase.STANDBY, save=False)
            life._report_ready(decision.report)
        elif decision.kind == DONE:
            life.done_code = decision.code
            life.enter(Phase.STANDBY, save=False)
            life._report_ready(decision.report)
            if life.passthrough:
                life.seams.stderr(f"{life.job.name} not started here: {gate.said}")
        life.keeper.save()
        return False

    def tick(self) -> None:
        """Renew inline (tests), note a renew problem once, and stop the tree once the lease is lost."""
        life = self.life
        if self.asking and not self.gate.guard.asking:
            self.asking = False
            life.next_start = life.seams.clock()  # the gate's answer is in: the start goes on
        news = self.gate.on_tick()
        for text in news.notes:
            life._note(text)
        if news.changed:
            life.keeper.save()
        if news.lost is None:
            return
        self._lost(news.lost)
        if life.child.pid is not None:
            life.ending = LEASE
            life._stop_tree("the cluster lease was lost: stopping the tree before another host may start",
                            leftovers=True)
        life.keeper.save()

    def run_ended(self) -> None:
        said = self.gate.run_ended()
        if said:
            self.life._note(said)

    def _lost(self, lost: str) -> None:
        self.life._note(lost)
        self.life._tell("lease-lost", self.life.state.last_exit_code, lost)
