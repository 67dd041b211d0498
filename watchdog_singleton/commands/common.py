"""What several commands share: the per-host stores, the crontab editor, starting and stopping."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Callable, Optional

from .. import paths
from ..cron.crontab import CrontabEditor, CrontabIO, render
from ..errors import FAILED, UserError
from ..job.model import Job, JobStore
from ..proc import procs
from ..proc.stop import stop_job
from ..proc.tree import Stopper
from ..state.store import RunState, StateStore

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

    def isolation(self) -> str:
        """The interpreter flag our crontab lines and launches give `python` (-I, -P or none)."""
        return paths.isolation_flag() if self.python == sys.executable else ""

    def cron_line(self, job: Job) -> bytes:
        return render(job, self.python, self.root, shutil.which("flock"), self.isolation())

    def known(self, name: str) -> tuple[Optional[Job], Optional[RunState]]:
        job, state = self.jobs.load(name), self.states.load(name)
        if job is None and state is None:
            raise self.jobs.no_such_job(name)
        return job, state


def launch_detached(ctx: Context, name: str) -> str:
    """Start NAME now through the launcher, in a fresh process; return its one-line report
    ("running NAME: pid N" or "NAME already runs: pid N") once the daemon has run its settle time."""
    flag = paths.isolation_flag() if ctx.python == sys.executable else ""
    # From /, like cron's line: a json.py in the caller's folder must not shadow the stdlib. And
    # without another job's markers: a job installed from inside another's tree is not part of it.
    proc = subprocess.run(
        [ctx.python, *([flag] if flag else []), "-m", "watchdog_singleton", "run", "--detach",
         "--state-dir", ctx.root, name],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, cwd="/",
        env=procs.clean_environ(dict(os.environ)))
    if proc.returncode != 0:
        message = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "launcher failed"
        raise UserError(message.removeprefix("watchdog-singleton: "), FAILED)
    return proc.stdout.strip()


def start_now(ctx: Context, job: Job, why_kept: str) -> str:
    """Start NAME and check it still runs after its settle time; a daemon that died at once is a
    failure (exit 1) whose one line says how it ended, where its log is, and `why_kept`. A
    periodic job that cron fires at each due time is not run now: its next due time is said."""
    if job.periodic and not job.supervised_schedule:
        from ..job.schedule import CronSchedule

        due = time.strftime("%H:%M", time.localtime(CronSchedule(job.schedule).next_after(time.time())))
        return f"{job.name} runs at each due time of '{job.schedule}'; the next is {due}"
    try:
        return launch_detached(ctx, job.name)
    except UserError as exc:
        raise UserError(f"{exc} ({why_kept})", exc.exit_code) from None


def ask_house(state: RunState, message: dict[str, object], timeout: float) -> Optional[dict[str, object]]:
    """Ask the shared resident that supervises NAME (install --shared); None if it does not answer."""
    from ..supervisor.housewire import ask

    try:
        return ask(state.house, message, timeout)
    except OSError:
        return None


def is_shared_resident(pid: int) -> bool:
    """Whether `pid` is a shared resident (supervisor/housemain.py): it holds every shared job's lock,
    and a signal to it would stop them all."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"watchdog_singleton.supervisor.housemain" in f.read()
    except OSError:
        return False


def tell_to_reload(state: Optional[RunState]) -> bool:
    """Ask NAME's running supervisor to re-read its definition (SIGUSR2, or a shared job's request
    to the shared resident); False if none runs."""
    if state is None or not state.supervisor_alive():
        return False
    if state.house:
        answer = ask_house(state, {"op": "reload", "name": state.name}, 10.0)
        return bool(answer and answer.get("reloaded"))
    assert state.supervisor_pid is not None
    try:
        os.kill(state.supervisor_pid, 12)  # SIGUSR2
    except (ProcessLookupError, PermissionError):
        return False
    return True


def stop_processes(lock_path: str, state: Optional[RunState], grace: float,
                   stopper: Optional[Stopper] = None) -> int:
    """Stop everything of the job; return how many processes were found. Returns only when a
    scan finds none left: the supervisor first (it stops its own tree gracefully), then what it
    could not reach (orphans of a SIGKILLed supervisor, lean daemons, holders of the lock)."""
    found = 0
    supervisor = None
    shared = state is not None and bool(state.house)
    if state is not None and shared and state.supervisor_alive():
        # One request to the shared resident, never a signal: that would stop all its jobs. If it
        # does not answer, NAME's tree is stopped below, by its daemon and its marker.
        answer = ask_house(state, {"op": "stop", "name": state.name}, grace + 15.0)
        found += 1 if answer and answer.get("stopped") else 0
    elif state is not None and state.supervisor_alive():
        assert state.supervisor_pid is not None and state.supervisor_start is not None
        supervisor = (state.supervisor_pid, state.supervisor_start)

    def roots() -> list[int]:  # asked once the supervisor is gone
        if state is None:
            return []
        known = [(state.pid, state.pid_start)]
        if not shared:  # the shared resident is no root of NAME's tree: its other children are other jobs'
            known.insert(0, (state.supervisor_pid, state.supervisor_start))
        return [pid for pid, start in known if pid and procs.is_alive(pid, start, state.boot_id)]

    stopped = stop_job(lock_path, grace, supervisor=supervisor, roots=roots, holders=lock_path, stopper=stopper,
                       exclude_self=False, spare=is_shared_resident)  # it holds every shared job's lock
    if stopped.left:
        raise UserError(f"could not stop pids {sorted(stopped.left)} (stuck in the kernel?)", FAILED)
    return found + stopped.found
