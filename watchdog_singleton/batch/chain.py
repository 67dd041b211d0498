"""A submitted chain as a job: what `status`, `stop`, `start`, `restart` and `uninstall` do with it.

Usage::

    info = chain.describe(root, "web", load_record(root, "web"), state)   # status's `batch` object
    say(chain.stop_chain(root, "web"))      # the stop marker, then nothing of it queued
    say(chain.start_chain(root, "web"))     # the same script submitted again
    say(chain.remove_chain(root, "web"))    # stopped, and its batch folder gone

The chain's own memory is its batch folder (paths.batch_dir): the submission record, the script,
the stop marker and the run record. The run record is written by the scripts on the compute node
(`start TIME JOB HOST` and `end TIME JOB CODE WHY` lines, see batch.supervise): the supervisor's run
state lives only as long as one job, and a chain must show its runs, restarts and last exit between
jobs and after a stop.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from typing import Any, Optional

from .. import files, paths
from ..errors import FAILED, NO_SUCH_JOB, UserError
from ..state.store import RunState
from ..timefmt import iso, now_iso
from . import JOB_PREFIX, RUNS, STOP, Entry, Scheduler, load_record, save_record, spec_of
from .schedulers import get

DRAIN_SECONDS = 60.0  # after grace: what still runs this long after `stop` asked is cancelled outright


@dataclass
class Run:
    """One job of the chain as its script recorded it."""

    job: str
    host: str
    start: float
    end: Optional[float] = None
    code: Optional[int] = None  # the supervisor's exit code: the daemon's, or 128+N after signal N
    why: str = ""  # requeue (Slurm's warning), walltime (PBS/HTCondor timer), stop, term, exit; "" no end line

    @property
    def exit_code(self) -> Optional[int]:
        """As status shows exit codes: negative for a signal."""
        if self.code is None:
            return None
        return -(self.code - 128) if 128 < self.code < 160 else self.code


def read_runs(root: str, name: str) -> list[Run]:
    """The chain's runs, oldest first. Lines that do not parse (a node that died mid-write) are
    skipped; an `end` belongs to the last run of the same job id that has none."""
    try:
        data = files.read_bytes(os.path.join(paths.batch_dir(root, name), RUNS)) or b""
    except UserError:  # unreadable, or a symlink
        return []
    runs: list[Run] = []
    for raw in data.decode("utf-8", "replace").splitlines():
        words = raw.split()
        try:
            if len(words) == 4 and words[0] == "start":
                runs.append(Run(job=words[2], host=words[3], start=float(words[1])))
            elif len(words) == 5 and words[0] == "end" and runs and runs[-1].job == words[2] \
                    and runs[-1].end is None:
                runs[-1].end, runs[-1].code, runs[-1].why = float(words[1]), int(words[3]), words[4]
        except ValueError:
            continue
    return runs


def _iso(epoch: Optional[float]) -> Optional[str]:
    return None if epoch is None else iso(epoch)


def _stopped(root: str, name: str) -> bool:
    return os.path.exists(os.path.join(paths.batch_dir(root, name), STOP))


def describe(root: str, name: str, record: Optional[dict[str, Any]],
             state: Optional[RunState] = None) -> Optional[dict[str, Any]]:
    """status's `batch` object from NAME's submission record (load_record) and its run state (the
    supervisor's row, which lives as long as one job): the queue entries with the scheduler's
    reason, a one-word state and the chain's runs, restarts and last exit."""
    if record is None:
        return None
    runs = read_runs(root, name)
    last = runs[-1] if runs else None
    ended = next((r for r in reversed(runs) if r.code is not None), None)
    # RESTARTS: each job after the first started the daemon again, and so did the supervisor of
    # the job now running (its row) each time the daemon died within the allocation.
    restarts = max(0, len(runs) - 1) + (state.restarts if state is not None else 0)
    last_exit: Optional[int]
    if state is not None and state.last_exit_code is not None and (last is None or last.end is None):
        last_exit, last_exit_at = state.last_exit_code, state.last_exit_at
    else:
        last_exit = ended.exit_code if ended else None
        last_exit_at = _iso(ended.end) if ended else None
    info: dict[str, Any] = {"scheduler": record.get("scheduler"), "script": record.get("script"),
                            "submitted": record.get("jobs", []), "submitted_at": record.get("submitted_at"),
                            "command": record.get("command"), "stdout_log": record.get("stdout_log"),
                            "stderr_log": record.get("stderr_log"), "stopped": _stopped(root, name),
                            "jobs": [], "state": "unknown", "running": False, "error": None,
                            "runs": len(runs), "restarts": restarts, "last_exit_code": last_exit,
                            "last_exit_at": last_exit_at,
                            "last_run": None if last is None else {
                                "job": last.job, "host": last.host, "started_at": _iso(last.start),
                                "ended_at": _iso(last.end), "code": last.code, "why": last.why or None}}
    try:
        entries = get(str(record.get("scheduler"))).entries(JOB_PREFIX + name)
    except UserError as exc:
        info["error"] = str(exc)
        return info
    info["jobs"] = [{"id": e.id, "state": e.state, "running": e.running, "reason": e.reason or None}
                    for e in entries]
    info["running"] = any(e.running for e in entries)
    info["state"] = _chain_state(entries, info["stopped"])
    info["started_at"] = _iso(last.start) if info["running"] and last is not None and last.end is None else None
    return info


def _chain_state(entries: list[Entry], stopped: bool) -> str:
    """running, waiting (queued: for the scheduler, a dependency or a requeue's delay), stopping
    (stopped while something of it is still queued), stopped (by `stop`, nothing queued) or dead
    (nothing queued and no stop: cancelled by hand, a job that failed to requeue)."""
    if entries:
        return "stopping" if stopped else "running" if any(e.running for e in entries) else "waiting"
    return "stopped" if stopped else "dead"


def _scheduler(record: dict[str, Any], what: str) -> Scheduler:
    sched = get(str(record["scheduler"]))
    missing = sched.missing_tools()
    if missing:
        raise UserError(f"{what}: {', '.join(missing)} not found on PATH", FAILED)
    return sched


def _record(root: str, name: str) -> dict[str, Any]:
    record = load_record(root, name)
    if record is None:
        raise UserError(f"no such job: {name}", NO_SUCH_JOB)
    return record


def stop_chain(root: str, name: str, poll: float = 1.0) -> str:
    """End NAME's chain for good: the stop marker first (no script requeues, resubmits or reruns
    after it), then cancel what waits, ask what runs to stop gracefully, and return once nothing of
    the chain is left in the queue (cancelling outright what outlives grace + 60 s). What was done,
    in one line."""
    record = _record(root, name)
    spec = spec_of(record)
    sched = _scheduler(record, f"stop {name}")
    files.ensure_dir(spec.folder)
    files.write_atomic(spec.stop_marker, b"stop\n")
    asked: set[str] = set()
    cancelled: set[str] = set()
    deadline = time.monotonic() + spec.grace + DRAIN_SECONDS
    while True:
        entries = sched.entries(spec.job_name)
        if not entries:
            break
        waiting = [e.id for e in entries if not e.running and e.id not in cancelled]
        if waiting:
            sched.cancel(waiting)
            cancelled.update(waiting)
        for entry in entries:
            if entry.running and entry.id not in asked:
                sched.ask_stop(entry, spec)
                asked.add(entry.id)
        if time.monotonic() > deadline:
            sched.cancel([e.id for e in entries])
            deadline = time.monotonic() + 30.0
        time.sleep(poll)
    said = []
    if asked:
        said.append(f"stopped {sched.name} job {', '.join(sorted(asked))} gracefully")
    if cancelled:
        said.append(f"cancelled {', '.join(sorted(cancelled))}")
    return (f"stopped the {sched.name} chain of {name}" + (": " + "; ".join(said) if said else
                                                           " (nothing was queued)") + "; nothing of it is queued")


def start_chain(root: str, name: str) -> str:
    """`start NAME` of a chain: submit its script again (a stopped chain, or one cancelled by hand);
    nothing when a job of it is queued already. What was done, in one line."""
    record = _record(root, name)
    spec = spec_of(record)
    sched = _scheduler(record, f"start {name}")
    entries = sched.entries(spec.job_name)
    if entries:
        jobs = ", ".join(f"{e.id} ({e.word()})" for e in entries)
        if os.path.exists(spec.stop_marker):
            raise UserError(f"{name} is still stopping ({sched.name} job {jobs}): start it once `stop {name}` "
                            "has returned", FAILED)
        return f"{name} is already queued: {sched.name} job {jobs}"
    script = str(record.get("script") or "")
    if not os.path.isfile(script):
        raise UserError(f"start {name}: its batch script {script or '(none)'} is gone: submit {name} again",
                        FAILED)
    files.remove(spec.stop_marker)  # a new chain: the old marker must not end it
    ids = sched.submit(spec, script)
    record["jobs"] = list(record.get("jobs", [])) + ids
    record["submitted_at"] = now_iso()
    save_record(root, name, record)
    return f"submitted {name} to {sched.name} again: job {', '.join(ids)} ({script})"


def remove_chain(root: str, name: str) -> str:
    """`uninstall NAME` of a chain: stop it (nothing of it queued), then remove its batch folder
    (record, script, run record, marker). The checkpoint folder and logs stay (--purge removes
    them). What was done, in one line."""
    done = stop_chain(root, name)
    folder = paths.batch_dir(root, name)
    if os.path.isdir(folder) and not os.path.islink(folder):
        shutil.rmtree(folder)
    return done
