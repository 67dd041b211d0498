"""What runs now on this host for each job: pids with their start times, restarts, exits.

Only the process that holds the job's lock writes its state, so writes need no further lock;
each write replaces the file atomically, so a reader never sees half of one.
"""

from __future__ import annotations

from .. import files, paths
from ..errors import UserError
from ..job.model import check_name
from ..job.record import REQUIRED, Record
from ..proc import procs

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing stays out of the resident supervisor's memory; annotations are strings
    from typing import Any, Callable, Optional


# What goes on from one supervisor of a job to the next: the restart count and the run record.
# (The history handed on may also hold UNSEEN: a line for the log, RunState.ended_unseen's.)
CARRIED = ("restarts", "last_exit_code", "last_exit_at", "runs", "failures", "timeouts", "skipped", "last_due",
           "last_start_at", "last_result", "last_duration", "history")
UNSEEN = "ended_unseen"


class RunState(Record):
    FIELDS = (
        ("name", REQUIRED),
        ("phase", "stopped"),  # one of phases.Phase; which may follow which: phases.NEXT
        ("boot_id", ""),
        ("supervisor_pid", None),
        ("supervisor_start", None),
        ("pid", None),
        ("pid_start", None),
        ("started_at", None),
        ("restarts", 0),
        ("last_exit_code", None),
        ("last_exit_at", None),
        ("next_start_at", None),
        ("backoff_seconds", 0.0),
        ("command", None),
        ("lock_path", ""),
        ("stdout_log", ""),
        ("stderr_log", ""),
        # The inodes of the daemon's stdout and stderr pipes (None: not piped, or an older file): an
        # adoption after a kill -9 of the shared resident reads those pipes again, and no others.
        ("stdout_pipe", None),
        ("stderr_pipe", None),
        ("lean", False),
        ("adhoc", False),
        ("house", ""),  # a shared job's (install --shared): the socket of the resident that supervises it
        ("message", ""),
        # Periodic jobs: the record of their runs (periodic.PeriodicRuns writes it).
        ("runs", 0),
        ("failures", 0),
        ("timeouts", 0),
        ("skipped", 0),
        ("last_due", None),
        ("last_start_at", None),
        ("last_result", None),
        ("last_duration", None),
        ("next_due_at", None),
        ("history", []),
        # Cluster jobs (leases.guard writes these): our part in NAME's lease as last seen here.
        ("lease_role", ""),  # holder | standby | "" (no cluster, or not yet asked)
        ("lease_token", None),  # our grant's fencing token while we hold it
        ("lease_holder", ""),  # standby: the host that held it when we last asked
        ("lease_problem", ""),  # the last trouble with the database, one line ("" once it answers)
        ("lease_checked_at", None),  # when we last heard from the database
    )
    name: str
    phase: str
    boot_id: str
    supervisor_pid: Optional[int]
    supervisor_start: Optional[int]
    pid: Optional[int]
    pid_start: Optional[int]
    started_at: Optional[str]
    restarts: int
    last_exit_code: Optional[int]
    last_exit_at: Optional[str]
    next_start_at: Optional[str]
    backoff_seconds: float
    command: Optional[list[str]]
    lock_path: str
    stdout_log: str
    stderr_log: str
    stdout_pipe: Optional[int]
    stderr_pipe: Optional[int]
    lean: bool
    adhoc: bool
    house: str
    message: str
    runs: int
    failures: int
    timeouts: int
    skipped: int
    last_due: Optional[float]  # Unix time of the last run's due time
    last_start_at: Optional[str]
    last_result: Optional[str]  # ok | failed (CODE) | timed out, and ", N skipped"
    last_duration: Optional[float]
    next_due_at: Optional[str]
    history: list[dict[str, Any]]  # the last runs, oldest first
    lease_role: str
    lease_token: Optional[int]
    lease_holder: str
    lease_problem: str
    lease_checked_at: Optional[str]

    def supervisor_alive(self) -> bool:
        return procs.is_alive(self.supervisor_pid, self.supervisor_start, self.boot_id)

    def daemon_alive(self) -> bool:
        return procs.is_alive(self.pid, self.pid_start, self.boot_id)

    def ended_unseen(self) -> str:
        """A line for the job's log when this record's daemon ended while no supervisor ran (its
        supervisor killed, then the daemon gone, this boot, with no end recorded); "" otherwise.
        Read by the next start, which holds the job's lock: nothing else can still write it."""
        if self.phase != "running" or self.pid is None or not self.supervisor_pid or self.lean:
            return ""
        if self.boot_id != procs.boot_id() or self.supervisor_alive() or self.daemon_alive():
            return ""
        which = "the shared supervisor" if self.house else "its supervisor"
        return (f"pid {self.pid} ended while no supervisor ran (after {which} pid {self.supervisor_pid} died); "
                "how is unknown")

    def supervisor_trouble(self) -> str:
        """"gone" (SIGKILLed) or "stopped" (SIGSTOP, a debugger) when the supervisor this record
        names should be at work and cannot be; "" otherwise: lean mode has none, and one that
        ended on purpose (`stop`, the daemon done) recorded that."""
        if self.lean or not self.supervisor_pid or self.phase in ("stopped", "exited"):
            return ""
        if not self.supervisor_alive():
            return "gone"
        info = procs.read_proc(self.supervisor_pid)
        return "stopped" if info is not None and info.state in ("T", "t") else ""


class StateStore:
    """Run state for this host: one JSON file each under <state dir>/run.

    The disk may be full, read-only or an NFS home gone stale; the supervisor must outlive all
    of that. So `save` never raises for it: it returns False and keeps the reason in
    `last_error` (None again after the next success), and the caller saves again later. `load`
    of a file that cannot be read gives None, with the reason in `last_error`, as if missing.
    """

    def __init__(self, root: str) -> None:
        self.root = root
        self.folder = files.JsonFolder(paths.run_dir(root), check_name)
        self.last_error: Optional[str] = None

    def load(self, name: str) -> Optional[RunState]:
        """NAME's state, or None if missing or unreadable (see `last_error`); a symlink at its
        path is refused (UserError)."""
        self.last_error = None
        try:
            data = self.folder.read(name)
        except files.Unreadable as exc:
            self.last_error = str(exc)
            return None
        return RunState.from_dict(data) if data else None

    def save(self, state: RunState) -> bool:
        """Write `state`; False, with the reason in `last_error`, if the disk would not take it."""
        try:
            # Not fsynced: run state is void after a crash of the machine (a new boot id), and
            # the restart path should not wait on the disk.
            self.folder.write(state.name, state.to_dict(), durable=False)
        except (OSError, UserError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            self.last_error = f"cannot save {self.folder.path(state.name)}: {reason}"
            return False
        self.last_error = None
        return True

    def delete(self, name: str) -> None:
        self.folder.delete(name)

    def names(self) -> list[str]:
        return self.folder.names()



class StateKeeper:
    """The supervisor's writer of its job's state: a full or read-only disk must never stop the
    supervisor or the daemon, so a failed write is reported once, retried (`heal`, every
    RETRY_SECONDS), and reported again once it succeeds."""

    RETRY_SECONDS = 5.0

    def __init__(self, store: StateStore, state: RunState, note: Callable[[str], None]) -> None:
        self.store = store
        self.state = state
        self.note = note
        self.error: Optional[str] = None

    def save(self) -> None:
        try:
            problem = None if self.store.save(self.state) else (self.store.last_error or "write failed")
        except OSError as exc:
            problem = exc.strerror or str(exc)
        except UserError as exc:  # the folder became unusable (a symlink planted, say)
            problem = str(exc)
        if problem and self.error is None:
            self.note(f"cannot write the state file: {problem}; retrying every {self.RETRY_SECONDS:g} s")
        elif not problem and self.error is not None:
            self.note("the state file is written again")
        self.error = problem

    def heal(self) -> None:
        """Write again after a failed write; else make sure the state on file is ours (a duplicate
        supervisor that stepped down may have written its own)."""
        if self.error is not None:
            self.save()
            return
        current = self.store.load(self.state.name)
        if current is None or current.supervisor_pid != self.state.supervisor_pid:
            self.save()
