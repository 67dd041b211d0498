"""A periodic job's runs: when the next one is due, and the record of those that ran.

    runs = PeriodicRuns(job, state, time.time)
    due = runs.first_due()          # wall time: start the first run then (plus runs.jitter())
    runs.started(due)               # ... the run goes on ...
    result = runs.finished(code, timed_out=False)
    due = runs.next_due()           # None when cron fires each run (this one was the only one)

Semantics are PanDA's (research notes, section A1): due times are counted start to start; a
run still going when the next is due is never joined by a second one, and the slots it
outlasted are skipped and recorded, not made up. `catch_up = "once"` makes up one missed due
time at start, like systemd's Persistent=. The record lives in the job's run state, so it
goes on across supervisors.
"""

from __future__ import annotations

import os

from .jobs import iso
from .schedule import CronSchedule, EverySchedule, skipped_between

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing stays out of the resident supervisor's memory; annotations are strings
    from typing import Any, Callable, Optional

    from .jobs import Job
    from .state import RunState

HISTORY = 20  # runs kept in the state for `status --history`
SKIPS_RECORDED = 5  # skipped slots written to the history per long run (all are counted)


def fraction() -> float:
    """A fresh random number in [0, 1], without importing random (which loads hashlib)."""
    return int.from_bytes(os.urandom(4), "big") / 0xFFFFFFFF


def result_text(entry: dict[str, Any]) -> str:
    result = str(entry.get("result", ""))
    if result == "failed":
        return f"failed ({entry.get('code')})"
    return result


class PeriodicRuns:
    def __init__(self, job: Job, state: RunState, wall: Callable[[], float]) -> None:
        self.job = job
        self.state = state
        self.wall = wall
        # Cron fires each run, unless the supervisor keeps the due times (--every, --catch-up once).
        self.once = not job.supervised_schedule
        anchor = state.last_due if job.every > 0 and state.last_due else wall()
        self.schedule: CronSchedule | EverySchedule = (EverySchedule(job.every, anchor) if job.every > 0
                                                       else CronSchedule(job.schedule))
        self.due: Optional[float] = None
        self.started_at: Optional[float] = None
        self.loops = 0

    # -- when --------------------------------------------------------------------------------
    def first_due(self) -> float:
        """The due time of the first run of this supervisor."""
        now = self.wall()
        if self.once:
            # Started by cron at a due minute (or by hand): this tick's slot is the run's due time.
            previous = self.schedule.previous_at_or_before(now)
            return previous if previous is not None and now - previous < 60 else now
        last = self.state.last_due
        previous = self.schedule.previous_at_or_before(now)
        if last is None:
            return now if self.job.every > 0 else self.schedule.next_after(now)
        if self.job.catch_up == "once" and previous is not None and previous > last:
            self.note_catch_up = previous
            return now  # one make-up run for the due time(s) missed while nothing ran
        return self.schedule.next_after(max(now, last))

    note_catch_up: Optional[float] = None

    def jitter(self) -> float:
        """A fresh delay in [0, jitter]: never early, spread per run."""
        return self.job.jitter * fraction() if self.job.jitter > 0 else 0.0

    def slot_end(self) -> float:
        """When the current run's period is over (loop mode reruns until then)."""
        assert self.due is not None
        return self.schedule.next_after(self.due)

    def next_due(self) -> Optional[float]:
        """The next due time after the run that just ended; None when cron fires each run."""
        if self.once or self.due is None:
            return None
        return self.schedule.next_after(max(self.wall(), self.due))

    # -- the record -------------------------------------------------------------------------
    def started(self, due: float) -> None:
        self.due, self.started_at, self.loops = due, self.wall(), 1
        self.state.last_due = due
        self.state.last_start_at = iso(self.started_at)

    def skipped_slot(self, why: str) -> None:
        """The due time came, but its run is not ours (sync: another host started this period's)."""
        state = self.state
        state.skipped += 1
        entry: dict[str, Any] = {"due": iso(self.due if self.due is not None else self.wall()), "result": "skipped",
                                 "code": None, "why": why}
        state.history = (list(state.history or []) + [entry])[-HISTORY:]

    def finished(self, code: int, timed_out: bool, stopped: bool = False) -> tuple[str, int]:
        """Record the run that ended; returns its result word and how many slots it skipped.
        A run ended by `stop` is recorded as stopped, not as a failure."""
        assert self.due is not None and self.started_at is not None
        ended = self.wall()
        duration = ended - self.started_at
        result = "timed out" if timed_out else "ok" if code == 0 else "stopped" if stopped else "failed"
        state = self.state
        state.runs += 1
        if result in ("failed", "timed out"):
            state.failures += 1
        if timed_out:
            state.timeouts += 1
        entry: dict[str, Any] = {"due": iso(self.due), "start": iso(self.started_at), "duration": round(duration, 3),
                                 "result": result, "code": code}
        if self.loops > 1:
            entry["loops"] = self.loops
        skipped = skipped_between(self.schedule, self.due, ended)
        entries = [entry]
        when = self.due
        for _ in range(min(skipped, SKIPS_RECORDED)):
            when = self.schedule.next_after(when)
            entries.append({"due": iso(when), "result": "skipped", "code": None})
        state.skipped += skipped
        state.history = (list(state.history or []) + entries)[-HISTORY:]
        state.last_result = result_text(entry) if not skipped else f"{result_text(entry)}, {skipped} skipped"
        state.last_duration = round(duration, 3)
        return result, skipped
