"""A periodic job's decisions after each run (the supervisor's part of periodic.PeriodicRuns):
loaded only by the supervisor of a periodic job."""

from __future__ import annotations

from ..job.notify import RESULT_EVENTS
from .decisions import Decision, Done, NextDue
from .periodic import PeriodicRuns

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing stays out of the resident supervisor's memory; annotations are strings
    from typing import Callable, Optional

    from ..job.model import Job
    from ..state.store import RunState


def plan_for(job: Job, state: RunState, wall: Callable[[], float], clock: Callable[[], float]) -> PeriodicPlan:
    return PeriodicPlan(PeriodicRuns(job, state, wall, clock))


class PeriodicPlan:
    """A periodic job's next step after each event, over `PeriodicRuns` (the due times and the
    record). `notes` collects what the last call has to say in the job's log."""

    def __init__(self, runs: PeriodicRuns) -> None:
        self.runs = runs
        self.notes: list[str] = []
        self.event = ""  # the notify event of the run that just ended ("" for none)

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

    def after_run(self, code: int, timed_out: bool, stopping: bool) -> Decision:
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
