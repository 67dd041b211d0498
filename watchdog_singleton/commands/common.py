"""What several commands share: the per-host stores, the crontab editor, starting and stopping."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from typing import Callable, Optional

from .. import paths, procs
from ..crontab import CrontabEditor, CrontabIO, render
from ..errors import FAILED, NO_SUCH_JOB, UserError
from ..jobs import Job, JobStore
from ..state import RunState, StateStore

Echo = Callable[[str], None]


def echo_err(text: str) -> None:
    print(text, file=sys.stderr)


@dataclass
class Context:
    root: str
    jobs: JobStore
    states: StateStore
    python: str = sys.executable
    crontab_io: Optional[CrontabIO] = None
    before_crontab_write: Optional[Callable[[], None]] = None

    @classmethod
    def default(cls) -> "Context":
        root = paths.state_dir()
        return cls(root=root, jobs=JobStore(root), states=StateStore(root))

    def editor(self) -> CrontabEditor:
        io = self.crontab_io or CrontabIO()
        return CrontabEditor(io, paths.crontab_edit_lock(self.root), before_write=self.before_crontab_write)

    def cron_line(self, job: Job) -> bytes:
        return render(job, self.python, self.root, shutil.which("flock"),
                      paths.isolation_flag() if self.python == sys.executable else "")

    def known(self, name: str) -> tuple[Optional[Job], Optional[RunState]]:
        job, state = self.jobs.load(name), self.states.load(name)
        if job is None and state is None:
            raise UserError(f"no such job: {name}", NO_SUCH_JOB)
        return job, state


def launch_detached(ctx: Context, name: str) -> None:
    """Start NAME now through the launcher, in a fresh process; return once its daemon runs."""
    flag = paths.isolation_flag() if ctx.python == sys.executable else ""
    # From /, like cron's line: a json.py in the caller's folder must not shadow the stdlib.
    proc = subprocess.run(
        [ctx.python, *([flag] if flag else []), "-m", "watchdog_singleton", "run", "--detach",
         "--state-dir", ctx.root, name],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, cwd="/")
    if proc.returncode != 0:
        message = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "launcher failed"
        raise UserError(message.removeprefix("watchdog-singleton: "), FAILED)


def tree_of(lock_path: str, state: Optional[RunState]) -> dict[int, int]:
    """Every live process of the job: its supervisor and descendants, its marked processes, the
    holders of its lock file, and the daemon recorded in the state."""
    table = procs.all_procs()
    pids = procs.marked_with(table, lock_path) | procs.holding_file(table, lock_path)
    if state is not None:
        if state.supervisor_alive():
            assert state.supervisor_pid is not None
            pids |= {state.supervisor_pid} | procs.descendants(table, [state.supervisor_pid])
        if state.daemon_alive():
            assert state.pid is not None
            pids |= {state.pid} | procs.descendants(table, [state.pid])
    pids.discard(os.getpid())
    return procs.identities(table, pids)


def stop_processes(lock_path: str, state: Optional[RunState], grace: float,
                   killer: Optional[procs.Killer] = None) -> int:
    """Stop everything of the job; return how many processes were found. Returns when none is left."""
    killer = killer or procs.Killer()
    found = 0
    if state is not None and state.supervisor_alive():
        # The supervisor stops its own tree gracefully (SIGTERM, grace, SIGKILL) and then exits.
        assert state.supervisor_pid is not None and state.supervisor_start is not None
        supervisor = {state.supervisor_pid: state.supervisor_start}
        found += 1
        killer.signal_all(supervisor, signal.SIGTERM)
        killer.wait_gone(supervisor, killer.clock() + grace + 5.0)
    for _ in range(5):
        # What the supervisor could not reach: orphans of a SIGKILLed supervisor, lean daemons.
        tree = tree_of(lock_path, state)
        if not tree:
            return found
        found += len(tree)
        if killer.terminate(tree, grace):
            break
    left = tree_of(lock_path, state)
    if left:
        raise UserError(f"could not stop pids {sorted(left)}", FAILED)
    return found
