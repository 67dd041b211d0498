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
from ..lock.flock import folder_problem
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


ANSWER_WAIT = 5.0  # how long a live shared resident may take to answer a ping (it answers between turns)
LOOK_WAIT = 5.0  # after SIGHUP, how long it has to put its socket back (housemain.Door.look) and answer


def ask_house(state: RunState, message: dict[str, object], timeout: float) -> Optional[dict[str, object]]:
    """Ask the shared resident that supervises NAME (install --shared); None if it does not answer."""
    from ..supervisor.housewire import ask

    try:
        return ask(state.house, message, timeout)
    except OSError:
        return None


def _ping(state: RunState, timeout: float) -> Optional[str]:
    """None if the shared resident answers a ping at its socket; else why not, in a few words."""
    from ..supervisor.housewire import WireError, ask

    try:
        return None if ask(state.house, {"op": "ping"}, timeout) else "does not answer"
    except (FileNotFoundError, ConnectionRefusedError):
        return f"has no socket at {state.house}"
    except WireError as exc:
        return f"cannot be reached: {exc}"
    except OSError:  # a timeout: it is stopped (SIGSTOP) or hung
        return "does not answer"


def reach_house(state: Optional[RunState]) -> None:
    """Before a command changes anything of a shared job: its live resident must answer, as only it
    may stop or restart the job (stopping its tree around it, the resident starts it again at once;
    signalling the resident stops every job of it). One that does not (its socket deleted by a /tmp
    cleaner, or it is slow) gets SIGHUP, which makes it put its socket back at once, and a short
    while; then UserError (exit 1): nothing changed. A dead resident needs nothing: the command
    stops the tree itself."""
    if state is None or not state.house or not state.supervisor_alive():
        return
    pid = state.supervisor_pid
    assert pid is not None
    if _stopped(pid):  # it cannot answer, so no wait for it
        raise house_unreachable(state, "is stopped (SIGSTOP)")
    taken = _folder_taken(state.house)
    if taken:  # it puts nothing back in another user's folder: no SIGHUP, no wait can help
        raise UserError(f"{state.name} is supervised by the shared resident pid {pid}, which cannot be reached: "
                        f"{taken} (its lock folder was removed, then made again by someone else): nothing changed; "
                        f"`kill {pid}` stops every shared job it runs, and the next tick of each starts it "
                        "again in a lock folder of yours", FAILED)
    why = _ping(state, ANSWER_WAIT)
    if why is None:
        return
    try:
        os.kill(pid, 1)  # SIGHUP: every lock, its socket, lock and pid files looked at at once
    except OSError:
        pass
    deadline = time.monotonic() + LOOK_WAIT
    while why is not None and time.monotonic() < deadline and state.supervisor_alive():
        if _stopped(pid):  # stopped while asked: no answer can come
            break
        time.sleep(0.05)
        why = _ping(state, max(0.1, deadline - time.monotonic()))
    if why is None or not state.supervisor_alive():
        return
    raise house_unreachable(state, why)


def _folder_taken(socket: str) -> Optional[str]:
    """Why the folder of the resident's socket is no longer ours, or None."""
    return folder_problem(os.path.dirname(socket))


def _stopped(pid: int) -> bool:
    """True if process PID is stopped (SIGSTOP, or traced)."""
    proc = procs.read_proc(pid)
    return proc is not None and proc.state in ("T", "t")


def house_unreachable(state: RunState, why: str, changed: str = "nothing changed") -> UserError:
    """The one line of a command that may not act on a shared job: who, why, and what to do."""
    pid = state.supervisor_pid
    if pid and _stopped(pid):
        why, cure = "is stopped (SIGSTOP)", f"`kill -CONT {pid}`"
    else:
        cure = "try again in a minute"
    return UserError(f"{state.name} is supervised by the shared resident pid {pid}, which {why}: {changed}; "
                     f"{cure}, or `kill {pid}` stops every shared job it runs (the next tick starts a new one)",
                     FAILED)


def tell_to_reload(state: Optional[RunState]) -> Optional[bool]:
    """Ask NAME's running supervisor to re-read its definition (SIGUSR2, or a shared job's request
    to the shared resident): True if told, None if none runs, False if a live shared resident did
    not take it (the caller says so: the new settings then wait for the job's next start)."""
    if state is None or not state.supervisor_alive():
        return None
    if state.house:
        answer = ask_house(state, {"op": "reload", "name": state.name}, 10.0)
        return bool(answer and answer.get("reloaded")) or (None if not state.supervisor_alive() else False)
    assert state.supervisor_pid is not None
    try:
        os.kill(state.supervisor_pid, 12)  # SIGUSR2
    except (ProcessLookupError, PermissionError):  # gone, or its pid another user's now
        return None
    return True


def not_reloaded(name: str) -> str:
    """The warning when a running job's supervisor did not take its changed definition."""
    return (f"warning: the shared supervisor of {name} did not take the new settings, so {name} runs on "
            f"with the old ones until its next start; `watchdog-singleton restart {name}` applies them now")


def stop_processes(lock_path: str, state: Optional[RunState], grace: float,
                   stopper: Optional[Stopper] = None) -> int:
    """Stop everything of the job; return how many processes were found. Returns only when a
    scan finds none left: the supervisor first (it stops its own tree gracefully), then what it
    could not reach (orphans of a SIGKILLed supervisor, lean daemons, holders of the lock)."""
    found = 0
    supervisor = None
    shared = state is not None and bool(state.house)
    if state is not None and shared and state.supervisor_alive():
        # One request to the shared resident, never a signal: that would stop all its jobs. Never
        # around it either: it would start NAME again at once. Only a dead one's jobs are stopped below.
        reach_house(state)
        answer = ask_house(state, {"op": "stop", "name": state.name}, grace + 15.0)
        if answer is None and state.supervisor_alive():
            raise house_unreachable(state, f"did not answer the stop within {grace + 15.0:g} s",
                                    "its stop may still be under way")
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

    # Never our processes above the jobs (procs.is_infrastructure, stop_job's default `spare`): a
    # shared resident and its anchor hold every shared job's lock, and a signal to either stops them all.
    stopped = stop_job(lock_path, grace, supervisor=supervisor, roots=roots, holders=lock_path, stopper=stopper,
                       exclude_self=False)
    if stopped.left:
        raise UserError(f"could not stop pids {sorted(stopped.left)} (stuck in the kernel?)", FAILED)
    return found + stopped.found
