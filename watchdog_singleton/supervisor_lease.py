"""The supervisor's steps for a cluster job's lease: the gate before each start (hold the lease,
or say why not and decide what comes next), the tick that notices a renew problem or a lost
lease and stops the tree in time, and giving the lease back after a sync or rotate run
(leases/guard.py talks to the database). A part of `Supervisor`."""

from __future__ import annotations

import os

from . import notify
from .supervisor_part import SupervisorPart
from .timefmt import now_iso

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing stays out of the resident supervisor's memory; annotations are strings
    from typing import Callable, Optional

    from .leases import ClusterLease
    from .leases.guard import ClusterGuard


class LeaseSteps(SupervisorPart):
    if TYPE_CHECKING:  # what these steps use of the Supervisor they are part of (and SupervisorPart's)
        guard: Optional[ClusterGuard]
        _lease_said: str
        _wake: Callable[[], None]

    def _lease_guard(self, cluster: ClusterLease) -> ClusterGuard:
        from .leases import Timing
        from .leases.guard import ClusterGuard
        from .leases.keeper import boottime

        return ClusterGuard(self.job, cluster, Timing.for_lease(self.job.lease), lambda: self._wake(),
                            clock=self.seams.lease_clock or boottime, threaded=self.seams.threads)

    def _lease_gate(self) -> bool:
        """Before a start: hold NAME's cluster lease, or say why not and decide what comes next
        (wait for the next due time, retry as a standby, or leave)."""
        assert self.guard is not None
        if self.guard.keeper.grant is not None and self.guard.lost():
            # Stopped (SIGSTOP) past the give-up deadline: the watcher ended the tree meanwhile.
            self._lease_lost()
        gate = self.guard.gate()
        state = self.state
        state.lease_checked_at = now_iso() if not gate.unreachable else state.lease_checked_at
        if gate.go:
            if state.lease_token != self.guard.token or state.lease_role != "holder":
                self._note(f"holding the cluster lease of {self.job.name}: token {self.guard.token}")
            state.lease_role, state.lease_token, state.lease_holder = "holder", self.guard.token, ""
            state.lease_problem = self._lease_said = ""
            self.guard.start_renewing()
            return True
        state.lease_role, state.lease_token, state.lease_holder = "standby", None, gate.holder
        state.lease_problem = gate.why if gate.unreachable else ""
        if gate.why != self._lease_said:
            self._lease_said = gate.why
            self._note(f"not started here: {gate.why}")
        now = self.seams.clock()
        if self.periodic is not None and gate.taken:
            self.periodic.skipped_slot(gate.why)  # sync: this period's run is another host's
        due = self.periodic.next_due() if self.periodic is not None and not self.stopping else None
        if due is not None:
            self._wait_for(due)  # the supervisor keeps the due times: ask again at the next
        elif self.job.standby and self.periodic is None:
            self.next_start = now + self.guard.timing.retry
            state.phase = "standby"
            self._report_ready(f"ok standby {self.job.name}: {gate.why}: standing by")
        else:
            # Leave: the next tick asks again. An unreachable database is a failure for a manual
            # run (exit 1, on stderr) and a quiet exit from cron (its log and status say it).
            self.done_code = 1 if gate.unreachable else 0
            state.phase = "standby"
            said = f"{self.job.name} not started here: {gate.why}"
            self._report_ready(f"unavailable {said}" if gate.unreachable else f"ok standby {said}")
            if self.passthrough:
                os.write(2, f"watchdog-singleton: {said}\n".encode())
        self.keeper.save()
        return False

    def _lease_tick(self) -> None:
        """Renew inline (tests), note a renew problem once, and stop the tree once the lease is lost."""
        guard = self.guard
        assert guard is not None
        guard.tick()
        problem = guard.keeper.problem
        if guard.keeper.grant is None:
            return
        if problem != self._lease_said:
            if problem:
                self._note(f"cluster lease: {problem}")
            elif self._lease_said:
                self._note("cluster lease: renewed again")
            self._lease_said = self.state.lease_problem = problem
            self.keeper.save()
        if not guard.lost():
            return
        self._lease_lost()
        if self.daemon is not None:
            self.ending = "lease"
            self._stop_tree("the cluster lease was lost: stopping the tree before another host may start",
                            leftovers=True)
        self.keeper.save()

    def _lease_lost(self) -> None:
        assert self.guard is not None
        problem = self.guard.keeper.problem
        self.guard.forget()
        self.state.lease_role, self.state.lease_token = "", None
        lost = f"lost the cluster lease of {self.job.name} ({problem or 'expired'})"
        self._note(lost)
        notify.job_event(self.job, "lease-lost", self.state.last_exit_code, lost, self._note, self.inherit_env)

    def _lease_run_ended(self) -> None:
        if self.guard is None or not (self.job.sync or self.job.rotate):
            return
        turn = self.guard.run_ended()
        self.state.lease_role, self.state.lease_token = "", None
        if turn is not None:
            self._note(f"the turn passes to {turn}")
