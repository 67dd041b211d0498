"""The supervisor's steps for periodic runs and deadlines: waiting for a due time, arming a
run's timeout or a daemon's --max-lifetime, ending a run ourselves, and recording a run that
ended (periodic.PeriodicRuns keeps the due times and the record). A part of `Supervisor`."""

from __future__ import annotations

from . import notify
from .errors import TIMED_OUT
from .supervisor_part import SupervisorPart

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing stays out of the resident supervisor's memory; annotations are strings
    from .logsink import LogSink


class PeriodicSteps(SupervisorPart):
    if TYPE_CHECKING:  # what these steps use of the Supervisor they are part of (and SupervisorPart's)
        out: LogSink

    def _wait_for(self, due: float) -> None:
        """Start the next run at `due` (on the periodic clock), plus a fresh jitter: never early. A
        run due already because the last one outlasted its period starts at once, with no jitter."""
        runs = self.periodic
        assert runs is not None
        runs.due = due
        delay = max(0.0, due - runs.now()) + (0.0 if runs.overran else runs.jitter())
        self.next_start = self.seams.clock() + delay
        self.state.next_due_at = runs.when(due)
        if delay > 0:
            self.state.phase = "waiting"
            self.keeper.save()

    def _arm_deadline(self) -> None:
        job, now = self.job, self.seams.clock()
        if self.periodic is not None:
            assert self.periodic.due is not None
            if self.periodic.started_at is None or self.periodic.loops == 0:
                late = self.periodic.started(self.periodic.due)
                if late is not None:
                    self._note(late)
                self.deadline = now + job.run_timeout
                marker = f"run due {self.periodic.when(self.periodic.due)} started (pid {self.state.pid})"
                self._note(marker)
                if not self.passthrough:
                    self.out.note(marker)
            else:
                self.periodic.loops += 1  # loop mode: the same slot, its deadline unchanged
        elif job.max_lifetime > 0:
            self.deadline = now + job.max_lifetime
        else:
            self.deadline = None

    def _end_run_ourselves(self, now: float) -> None:
        """A periodic run past its timeout, or a daemon past its --max-lifetime: stop its tree
        (SIGTERM, grace, SIGKILL), and record why."""
        self.deadline = None
        if self.periodic is not None:
            self.ending = "timeout"
            why = f"run timed out after {self.job.run_timeout:g} s"
        else:
            self.ending = "lifetime"
            why = f"--max-lifetime {self.job.max_lifetime:g} s reached: restarting it"
        self._stop_tree(why, leftovers=True)  # which logs `why` once

    def _after_periodic_run(self, code: int, message: str) -> None:
        assert self.periodic is not None
        runs = self.periodic
        timed_out, self.ending = self.ending == "timeout", None
        if runs.started_at is None:  # it could not even start: still a run that failed
            runs.started(runs.due if runs.due is not None else runs.now())
        if (not timed_out and code == 0 and self.job.loop and not self.stopping
                and runs.now() < runs.slot_end()):
            self.next_start = self.seams.clock()  # PanDA's loop mode: again at once, within the period
            self.state.phase = "starting"
            return
        self._lease_run_ended()
        result, skipped = runs.finished(code, timed_out, stopped=self.stopping)
        runs.started_at = None
        runs.loops = 0
        self.deadline = None
        self.state.message = message
        if skipped:
            self._note(f"the run outlasted its period: {skipped} due time(s) skipped")
        said = f"run due {runs.when(runs.due or 0)}: {result}" + (f" (code {code})" if result == "failed" else "")
        self._note(said)
        notify.job_event(self.job, notify.RESULT_EVENTS.get(result, ""), code, said, self._note, self.inherit_env)
        due = None if self.stopping else runs.next_due()
        if due is None:
            self.done_code = code if not timed_out else TIMED_OUT
            self.state.phase = "exited"
            self.state.next_due_at = None
            self.keeper.save()
            return
        self._wait_for(due)
        self.keeper.save()
