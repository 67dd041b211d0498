"""What the supervisor decides, apart from what it does: small objects that take what happened and
return what to do (a `Decision`), and touch no process, clock or file of their own.

    policy = RestartPolicy(job)
    policy.after_exit(code=1, lasted=0.2, now=clock())     # -> RestartAt(at, delay, n) | Done(code)
    plan = plan_for(job, state, wall, clock)               # periodic_plan (periodic jobs only)
    plan.again(code, timed_out, stopping, loop) or plan.after_run(code, timed_out, stopping)  # NextDue | Done
    gate = LeaseGate.open(job, state, cluster, wake)       # lease_gate (cluster jobs only)
    gate.before_start(now, checked_at, plan, stopping)     # -> Go() | NextDue(due) | Standby(at) | Done(code)
    gate.on_tick()                                         # -> LeaseNews(notes, changed, lost)

The supervisor's Lifecycle (supervisor/life.py) turns each answer into actions: spawn, stop the
tree, save, note. `PeriodicRuns` (periodic.py) and the guard (leases/guard.py) keep the record
and talk to the database; the deciding objects only read and update the run state's fields they own.
"""

from __future__ import annotations

import math

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing stays out of the resident supervisor's memory; annotations are strings
    from typing import Optional

    from ..job.model import Job

BURST = 3  # quick runs in a row restarted at once; backoff begins with the next
LIFETIME, TIMEOUT, LEASE = "lifetime", "timeout", "lease"  # why we end a run ourselves (`Lifecycle.ending`)


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
    """What to do next. One small class, not one per kind: each class would cost the resident
    supervisor a type object. `kind` is one of the constants below; the other fields are those
    its maker below sets."""
    __slots__ = ("kind", "at", "delay", "quick_runs", "due", "code", "report")

    def __init__(self, kind: str, at: float = 0.0, delay: float = 0.0, quick_runs: int = 0, due: float = 0.0,
                 code: int = 0, report: Optional[str] = None) -> None:
        self.kind, self.at, self.delay, self.quick_runs, self.due = kind, at, delay, quick_runs, due
        self.code, self.report = code, report

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Decision) and all(getattr(self, k) == getattr(other, k) for k in self.__slots__)

    def __repr__(self) -> str:
        return f"Decision({', '.join(f'{k}={getattr(self, k)!r}' for k in self.__slots__)})"


GO, RESTART, NEXT_DUE, STANDBY, DONE = "go", "restart", "next due", "standby", "done"


def Go() -> Decision:  # named like the decision it makes
    """The lease is ours: start."""
    return Decision(GO)


def RestartAt(at: float, delay: float, quick_runs: int) -> Decision:
    """Start again at `at` (the supervisor's clock), `delay` seconds from now."""
    return Decision(RESTART, at=at, delay=delay, quick_runs=quick_runs)


def NextDue(due: float) -> Decision:
    """Start the next periodic run at `due` (the periodic clock); for the lease gate, ask again then."""
    return Decision(NEXT_DUE, due=due)


def Standby(at: float, report: str) -> Decision:
    """Another host runs it: ask again at `at`; `report` is for whoever waits for the start."""
    return Decision(STANDBY, at=at, report=report)


def Done(code: int, report: Optional[str] = None) -> Decision:
    """Start no more: the supervisor ends with `code`; `report` is for whoever waits for the start."""
    return Decision(DONE, code=code, report=report)


class RestartPolicy:
    """--restart with the backoff of quick exits: after each exit of a daemon kept alive, start it
    again (at once, or after a pause once BURST quick runs came in a row), or be done."""

    def __init__(self, job: Job) -> None:
        self.job = job  # replaced when the definition is re-read; the count goes on
        self.quick_runs = 0

    def after_exit(self, code: int, lasted: float, now: float, *, lifetime: bool = False,
                   stopping: bool = False) -> Decision:
        """`lifetime`: we ended it at --max-lifetime (never a quick run); `stopping`: a stop is under way."""
        job = self.job
        if stopping or job.restart == "never" or (job.restart == "on-failure" and code == 0):
            return Done(code)
        quick = lasted < finite(job.min_uptime, 1.0) and not lifetime
        self.quick_runs = self.quick_runs + 1 if quick else 0
        delay = restart_delay(job, self.quick_runs)
        return RestartAt(now + delay, delay, self.quick_runs)
