"""A periodic job's runs: when the next one is due, and the record of those that ran.

    runs = PeriodicRuns(job, state, time.time, time.monotonic)
    due = runs.first_due()          # on runs.now()'s clock: start the first run then (plus runs.jitter())
    runs.started(due)               # ... the run goes on ...
    result = runs.finished(code, timed_out=False)
    due = runs.next_due()           # None when cron fires each run (this one was the only one)

Semantics are PanDA's (research notes, section A1): due times are counted start to start; a
run still going when the next is due is never joined by a second one. When it ends after one
or more due times passed, the latest of them starts at once, recorded as late (PanDA's master
starts a daemon whose period passed as soon as its last run reported back); only the slots
before it were passed over, and they are counted as skipped, not made up. So a loop job, or one
whose runs take longer than its period, runs back to back. `catch_up = "once"` makes up one
missed due time at start, like systemd's Persistent=. The record lives in the job's run state,
so it goes on across supervisors.

The due times of `--every` are kept on the monotonic clock (`clock`), so a step of the wall
clock (NTP, a hand `date -s`) neither stalls nor hurries them; they are shown, and kept in the
state, as wall times. A cron expression's due times are wall times by nature.
"""

from __future__ import annotations

import os

from ..job.schedule import CronSchedule, EverySchedule, skipped_between
from ..timefmt import iso

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing stays out of the resident supervisor's memory; annotations are strings
    from typing import Any, Callable, Optional

    from ..job.model import Job
    from ..state.store import RunState

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


LATE_WARNING_EVERY = 900.0  # PanDA's master warns of a late daemon at most this often


class PeriodicRuns:
    def __init__(self, job: Job, state: RunState, wall: Callable[[], float],
                 clock: Optional[Callable[[], float]] = None) -> None:
        self.job = job
        self.state = state
        self.wall = wall
        # The clock due times are kept on: monotonic for --every, the wall clock for cron's times.
        self.clock = clock if clock is not None and job.every > 0 else wall
        # Cron fires each run, unless the supervisor keeps the due times (--every, --catch-up once).
        self.once = not job.supervised_schedule
        self.schedule: CronSchedule | EverySchedule
        if job.every > 0:
            last = self.last_due()
            self.schedule = EverySchedule(job.every, last if last is not None else self.now())
        else:
            self.schedule = CronSchedule(job.schedule)
        self.due: Optional[float] = None
        self.started_at: Optional[float] = None  # on `clock`, for the run's duration
        self.started_wall: Optional[float] = None
        self.loops = 0
        self.overran = False  # the next run is due already: the last one outlasted its period
        self.late = 0.0  # how late the running run started after its due time (it followed an overrun)
        self._warned_late_at: Optional[float] = None

    # -- clocks ------------------------------------------------------------------------------
    def now(self) -> float:
        return self.clock()

    def to_wall(self, t: float) -> float:
        """A time on `clock` as wall time, by the clocks' offset now."""
        return t if self.clock is self.wall else t + (self.wall() - self.clock())

    def when(self, t: float) -> str:
        """A time on `clock`, as the logs and the state show it."""
        return iso(self.to_wall(t))

    def last_due(self) -> Optional[float]:
        """The state's last due time on `clock`; never in the future (the wall clock may have
        stepped back since it was written, by another supervisor)."""
        if self.state.last_due is None:
            return None
        if self.clock is self.wall:
            return self.state.last_due
        return min(self.state.last_due - (self.wall() - self.clock()), self.now())

    # -- when --------------------------------------------------------------------------------
    def first_due(self) -> float:
        """The due time of the first run of this supervisor."""
        now = self.now()
        if self.once:
            # Started by cron at a due minute (or by hand): this tick's slot is the run's due time.
            previous = self.schedule.previous_at_or_before(now)
            return previous if previous is not None and now - previous < 60 else now
        last = self.last_due()
        previous = self.schedule.previous_at_or_before(now)
        if last is None:
            return now if self.job.every > 0 else self.schedule.next_after(now)
        if self.job.catch_up == "once" and previous is not None and previous > last:
            self.note_catch_up = previous
            return now  # one make-up run for the due time(s) missed while nothing ran
        return self.schedule.next_after(max(now, last))

    note_catch_up: Optional[float] = None  # on `clock`

    def jitter(self) -> float:
        """A fresh delay in [0, jitter]: never early, spread per run."""
        return self.job.jitter * fraction() if self.job.jitter > 0 else 0.0

    def slot_end(self) -> float:
        """When the current run's period is over (loop mode reruns until then)."""
        assert self.due is not None
        return self.schedule.next_after(self.due)

    def latest_passed(self, due: float, now: float) -> Optional[float]:
        """The last due time after `due` that came by `now`, if one did."""
        if self.schedule.next_after(due) > now:
            return None
        latest = self.schedule.previous_at_or_before(now)
        return latest if latest is not None and latest > due else None

    def next_due(self) -> Optional[float]:
        """The next due time after the run that just ended; None when cron fires each run. A due
        time that passed while the run went on is the next, at once (`overran`)."""
        if self.once or self.due is None:
            return None
        now = self.now()
        latest = self.latest_passed(self.due, now)
        self.overran = latest is not None
        return latest if latest is not None else self.schedule.next_after(max(now, self.due))

    # -- the record -------------------------------------------------------------------------
    def started(self, due: float) -> Optional[str]:
        """Record a run's start; returns PanDA's warning when it starts late after an overrun by
        more than max(300 s, half its period), at most every LATE_WARNING_EVERY seconds."""
        now = self.now()
        self.due, self.started_at, self.started_wall, self.loops = due, now, self.wall(), 1
        self.late = max(0.0, now - due) if self.overran else 0.0
        self.overran = False
        self.state.last_due = self.to_wall(due)
        self.state.last_start_at = iso(self.started_wall)
        period = self.schedule.next_after(due) - due
        if self.late <= max(300.0, period / 2):
            return None
        if self._warned_late_at is not None and now - self._warned_late_at < LATE_WARNING_EVERY:
            return None
        self._warned_late_at = now
        return (f"run due {self.when(due)} starts {self.late:.0f} s late: the run before it outlasted its "
                "period (more than max(300 s, half the period), as PanDA warns)")

    def skipped_slot(self, why: str) -> None:
        """The due time came, but its run is not ours (sync: another host started this period's)."""
        state = self.state
        state.skipped += 1
        entry: dict[str, Any] = {"due": self.when(self.due if self.due is not None else self.now()),
                                 "result": "skipped", "code": None, "why": why}
        state.history = (list(state.history or []) + [entry])[-HISTORY:]

    def finished(self, code: int, timed_out: bool, stopped: bool = False) -> tuple[str, int]:
        """Record the run that ended; returns its result word and how many slots it skipped: the
        due times that passed while it went on, but the latest, which runs next, late (or would,
        had `stop` not ended it; when cron fires each run, none runs late). A run ended by
        `stop` is recorded as stopped, not as a failure."""
        assert self.due is not None and self.started_at is not None
        ended = self.now()
        duration = ended - self.started_at
        result = "timed out" if timed_out else "ok" if code == 0 else "stopped" if stopped else "failed"
        state = self.state
        state.runs += 1
        if result in ("failed", "timed out"):
            state.failures += 1
        if timed_out:
            state.timeouts += 1
        entry: dict[str, Any] = {"due": self.when(self.due),
                                 "start": iso(self.started_wall if self.started_wall is not None else self.wall()),
                                 "duration": round(duration, 3), "result": result, "code": code}
        if self.loops > 1:
            entry["loops"] = self.loops
        if self.late >= 0.001:
            entry["late"] = round(self.late, 3)
        latest = None if self.once else self.latest_passed(self.due, ended)
        skipped = skipped_between(self.schedule, self.due, latest if latest is not None else ended)
        entries = [entry]
        when = self.due
        for _ in range(min(skipped, SKIPS_RECORDED)):
            when = self.schedule.next_after(when)
            entries.append({"due": self.when(when), "result": "skipped", "code": None})
        state.skipped += skipped
        state.history = (list(state.history or []) + entries)[-HISTORY:]
        state.last_result = result_text(entry) if not skipped else f"{result_text(entry)}, {skipped} skipped"
        state.last_duration = round(duration, 3)
        return result, skipped
