"""What the parts of `Supervisor` kept in modules of their own (supervisor_periodic,
supervisor_lease) use of the whole: declared here once, for the type checker only."""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing stays out of the resident supervisor's memory; annotations are strings
    from typing import Optional

    from .jobs import Job
    from .periodic import PeriodicRuns
    from .state import RunState, StateKeeper
    from .supervisor import Seams


class SupervisorPart:
    if TYPE_CHECKING:
        job: Job
        state: RunState
        seams: Seams
        keeper: StateKeeper
        periodic: Optional[PeriodicRuns]
        passthrough: bool
        inherit_env: Optional[dict[str, str]]
        stopping: bool
        next_start: float
        deadline: Optional[float]
        ending: Optional[str]
        done_code: Optional[int]
        daemon: Optional[int]

        def _note(self, text: str) -> None: ...

        def _stop_tree(self, why: str, leftovers: bool = False) -> None: ...

        def _report_ready(self, problem: Optional[str]) -> None: ...

        def _wait_for(self, due: float) -> None: ...

        def _lease_run_ended(self) -> None: ...
