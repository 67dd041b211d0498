"""status: what is known and what runs on this host."""

from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

from .. import paths
from ..cluster import CRON_TICK
from ..cluster.guard import heartbeat_tick
from ..cron.crontab import Entry
from ..cron.hostinfo import cron_daemon_running
from ..errors import NOT_RUNNING, OK, UserError
from ..files import Unreadable
from ..job.model import BrokenJob, Job, check_name
from ..lock import flock as lock
from ..proc import procs, tree
from ..quoting import shell_join
from ..state.store import RunState
from ..timefmt import iso
from .cluster import ClusterView, summary
from .cluster import describe as describe_cluster
from .common import Context, Echo


@dataclass
class HostView:
    """What status reads once per call, not once per job."""

    entries: dict[str, Entry]
    entries_known: bool
    cron_running: Optional[bool]
    locked: set[tuple[int, int, int]]
    zones: dict[str, str] = field(default_factory=dict)  # NAME -> the CRON_TZ above its line

    @classmethod
    def read(cls, ctx: Context) -> "HostView":
        from ..cron.crontab import parse_entries
        from ..cron.oldlines import cron_zones

        zones: dict[str, str] = {}
        try:
            text = ctx.editor().io.read()
            entries, known = parse_entries(text), True
            zones = cron_zones(text)
        except UserError:
            entries, known = {}, False
        return cls(entries, known, cron_daemon_running(), lock.locked_files(), zones)


def _shared(job: Optional[Job], state: Optional[RunState], supervisor: bool) -> bool:
    """Whether the shared resident supervises it: a shared job it had no room for runs under a
    supervisor of its own (tick/handover.py), and is shown so while that one lives."""
    if state is not None and supervisor:
        return bool(state.house)
    return bool(job.shared if job is not None else state is not None and state.house)


def describe(name: str, job: Optional[Job], state: Optional[RunState], host: HostView,
             state_error: Optional[str] = None, state_dir: str = "") -> dict[str, Any]:
    """NAME as status shows it. `state_error`: why its run state could not be read (then its lock
    tells what runs); `state_dir`: the run state's folder, to say why a record is out of date."""
    entry = host.entries.get(name)
    running = state is not None and state.daemon_alive()
    supervisor = state is not None and state.supervisor_alive()
    lock_path = job.lock_path if job else (state.lock_path if state else "")
    lock_held = bool(lock_path) and lock.is_held(lock_path, host.locked)
    pid = state.pid if running and state else None
    started_at = _real_start(state.pid_start) if running and state else None
    problem = ""
    if state is None and state_error:
        phase = "unknown"
        problem = (f"{state_error}: what runs is unknown, but its lock is "
                   + ("held, so a copy runs" if lock_held else "free, so nothing of it runs"))
    elif state is None:
        phase = "never started"
    elif running or supervisor or state.phase in ("stopped", "exited", "standby"):  # standby: runs elsewhere
        phase = state.phase
    else:
        phase = "dead"  # recorded as alive, but its processes are gone (reboot, SIGKILL)
    unwritable = bool(state_dir) and not os.access(state_dir, os.W_OK)
    if state is not None and supervisor and not running and (
            phase in ("running", "starting") or (phase == "waiting" and unwritable)):
        # The record names a daemon that is gone while its supervisor lives: between two runs, or
        # a state file the supervisor cannot write (a read-only or full disk; a periodic run
        # that started after the last write still reads `waiting`). Ask /proc.
        live = _daemon_of(state)
        if live is not None:
            running, phase = True, "running"
            pid, started_at = live[0], _real_start(live[1])
        elif phase != "waiting":
            phase = "starting"
        if unwritable:
            problem = (f"cannot write {state_dir}: its state on file is out of date; "
                       + ("the pid shown is read from the process table" if live else "no daemon runs now"))
    trouble, said = _supervisor_trouble(name, state, running)
    return {
        "name": name,
        "host": paths.host(),
        "supervisor": trouble,
        "installed": job is not None,
        "enabled": bool(job and job.enabled and (entry.enabled if entry else not host.entries_known)),
        "cron_entry": ("unknown" if not host.entries_known else
                       "missing" if entry is None else "enabled" if entry.enabled else "disabled"),
        "cron_daemon_running": host.cron_running,
        "running": running,
        "phase": phase,
        "pid": pid,
        "supervisor_pid": state.supervisor_pid if supervisor and state else None,
        "started_at": started_at or (state.started_at if running and state else None),
        "restarts": state.restarts if state else 0,
        **_last_exit(state),
        "last_exit_at": state.last_exit_at if state else None,
        "next_start_at": state.next_start_at if supervisor and state and not running else None,
        "backoff_seconds": state.backoff_seconds if supervisor and state and not running else 0.0,
        "schedule": job.schedule if job else None,
        "command": job.command if job else (state.command if state else None),
        "stdout_log": job.stdout_log if job else (state.stdout_log if state else None),
        "stderr_log": job.stderr_log if job else (state.stderr_log if state else None),
        "lock_path": lock_path,
        "lock_held": lock_held,
        "lean": bool(job and job.lean),
        "shared": _shared(job, state, supervisor),
        "message": state.message if state else "",
        "periodic": bool(job and job.periodic),
        "every": job.every if job and job.every else None,
        "runs": state.runs if state else 0,
        "failures": state.failures if state else 0,
        "timeouts": state.timeouts if state else 0,
        "skipped": state.skipped if state else 0,
        "last_start_at": state.last_start_at if state else None,
        "last_duration": state.last_duration if state else None,
        "last_result": state.last_result if state else None,
        "next_due_at": _next_due(job, state, supervisor, host.zones.get(name)),
        "history": list(state.history) if state else [],
        "problem": problem or said,
        "lock_problem": _lock_problem(job),
    }


def _last_exit(state: Optional[RunState]) -> dict[str, Any]:
    """The last exit code; none, with `last_exit_unknown`, for an adopted daemon's end (no child of
    the shared resident that adopted it, which cannot know how it ended)."""
    code = state.last_exit_code if state else None
    unknown = code == procs.UNKNOWN_EXIT
    return {"last_exit_code": None if unknown else code, "last_exit_unknown": unknown}


def _supervisor_trouble(name: str, state: Optional[RunState], running: bool) -> tuple[str, str]:
    """("gone", why) for a daemon that runs on without its supervisor (SIGKILLed), ("stopped", why)
    for a SIGSTOPped supervisor, else ("", ""). A cluster job says it in its lease line."""
    trouble = state.supervisor_trouble() if state is not None and not state.lease_role else ""
    if trouble == "gone" and running and state is not None and state.house:
        return trouble, (f"its shared supervisor (pid {state.supervisor_pid}) is gone: the daemon runs on "
                         "unsupervised and still holds its lock; the next cron tick of any shared job starts a "
                         "new shared supervisor, which adopts it")
    if trouble == "gone" and running and state is not None:
        return trouble, (f"its supervisor ({state.supervisor_pid}) is gone: the daemon runs on and holds the lock, "
                         "unsupervised until the job's next cron tick, which adopts it (a periodic run ends on "
                         f"its own first); `restart {name}` gives it a new supervisor now")
    if trouble == "stopped" and state is not None:
        return trouble, (f"its supervisor ({state.supervisor_pid}) is stopped (SIGSTOP): nothing restarts the "
                         "daemon or reads its output until it gets SIGCONT")
    return "", ""


def _lock_problem(job: Optional[Job]) -> Optional[str]:
    """Why NAME's lock folder is not ours (another user made it first, a symlink), or None."""
    if job is None:
        return None
    return lock.folder_problem(job.lock_dir)


def _real_start(pid_start: Optional[int]) -> Optional[str]:
    """When a process of this boot started, from its start time in /proc (an adopted copy's UP
    counts from there, not from the adoption)."""
    when = procs.start_wall(pid_start) if pid_start is not None else None
    return iso(when) if when is not None else None


def _daemon_of(state: RunState) -> Optional[tuple[int, int]]:
    """(pid, start) of the oldest process below NAME's live supervisor, from /proc."""
    assert state.supervisor_pid is not None
    if state.house:  # the shared resident's other children are other jobs': the marker alone tells
        found = tree.members(procs.scan(), state.lock_path, exclude=(state.supervisor_pid,))
    else:
        found = tree.members(procs.scan(), state.lock_path, roots=(state.supervisor_pid,), marked=False)
    if not found:
        return None
    pid = min(found, key=lambda p: (found[p], p))
    return pid, found[pid]


def _next_due(job: Optional[Job], state: Optional[RunState], supervisor: bool,
              zone: Optional[str] = None) -> Optional[str]:
    """When a periodic job runs next: its supervisor's plan, or cron's next due time (in the
    CRON_TZ set above its line, if any)."""
    if job is None or not job.periodic or not job.enabled:
        return None
    if job.supervised_schedule:
        return state.next_due_at if state is not None and supervisor else None
    from ..cron.oldlines import next_due

    return next_due(job.schedule, time.time(), zone)  # None for one that never fires


def collect(ctx: Context, names: list[str], host: HostView) -> list[dict[str, Any]]:
    from .. import batch
    from ..batch import chain

    view: Optional[ClusterView] = None
    infos = []
    try:
        for n in names:
            state, state_error = _load_state(ctx, n)
            try:
                job = ctx.jobs.load(n)
            except BrokenJob as exc:  # shown as broken; the other jobs' rows are unaffected
                info = describe(n, None, state, host, state_error, ctx.states.folder.folder)
                info.update(installed=True, phase="broken", message=str(exc), batch=None, cluster=None, schedule="-")
                infos.append(info)
                continue
            info = describe(n, job, state, host, state_error, ctx.states.folder.folder)
            # A submitted batch chain: its queue entries and its runs (the scripts' run record) beside
            # the run state its supervisor writes while one job runs.
            record = batch.load_record(ctx.root, n)
            info["batch"] = chain.describe(ctx.root, n, record, state)
            if info["batch"]:
                _merge_chain(info, info["batch"])
            settings = _cluster_settings(job, record)
            if settings is None:
                info["cluster"] = None
            else:
                view = view or ClusterView()
                tick = heartbeat_tick(job) if job is not None else CRON_TICK
                info["cluster"] = describe_cluster(*settings, state, view, n, tick)
            infos.append(info)
    finally:
        if view is not None:
            view.close()
    return infos


def _load_state(ctx: Context, name: str) -> tuple[Optional[RunState], Optional[str]]:
    """NAME's run state, or why it could not be read."""
    try:
        state = ctx.states.load(name)
    except UserError as exc:  # a symlink planted at its path
        return None, str(exc)
    return state, (ctx.states.last_error if state is None else None)


def _state_names(ctx: Context) -> tuple[list[str], str]:
    """The names that have a run state, and why the folder could not be listed ("" if it could)."""
    try:
        return ctx.states.names(), ""
    except Unreadable as exc:
        return [], str(exc)


def _merge_chain(info: dict[str, Any], b: dict[str, Any]) -> None:
    """A chain is one job across the jobs of its scheduler: its state, runs, restarts and last exit
    are the chain's (the supervisor's row covers only the job that runs now)."""
    for key in ("command", "stdout_log", "stderr_log"):
        if not info[key]:
            info[key] = b[key]
    info["phase"] = b["state"]
    info["running"] = bool(info["running"] or b["running"])
    info["started_at"] = info["started_at"] or b.get("started_at")
    info["runs"], info["restarts"] = b["runs"], b["restarts"]
    info["last_exit_code"], info["last_exit_at"] = b["last_exit_code"], b["last_exit_at"]


def _runs_elsewhere(info: dict[str, Any]) -> bool:
    """A cluster job standing by here while another host holds its lease is up: it runs, there."""
    cluster = info.get("cluster")
    database = cluster.get("database") if cluster else None
    return bool(info["phase"] == "standby" and database and database.get("live"))


def _cluster_settings(job: Optional[Job], record: Optional[dict[str, Any]]
                      ) -> Optional[tuple[str, float, bool, bool, bool]]:
    """(url, lease, standby, rotate, sync) of a cluster job, installed or submitted; None otherwise."""
    if job is not None and job.cluster:
        return job.cluster, job.lease, job.standby, job.rotate, job.sync
    if record and record.get("cluster") not in (None, "", "none"):
        return (str(record["cluster"]), float(record.get("lease", 60.0)), bool(record.get("standby")),
                bool(record.get("rotate")), False)
    return None


def status(ctx: Context, echo: Echo, name: Optional[str] = None, as_json: bool = False,
           history: bool = False) -> int:
    if history and name is None:
        raise UserError("--history needs a NAME")
    if name is not None:
        check_name(name)
        if not ctx.jobs.exists(name) and _load_state(ctx, name) == (None, None) and not _submitted(ctx, name):
            raise ctx.jobs.no_such_job(name)
        info = collect(ctx, [name], HostView.read(ctx))[0]
        if as_json:
            echo(json.dumps(info, indent=2))
        else:
            echo(history_table(info) if history else table([info]))
        if info["phase"] == "unknown":  # its run state could not be read: the lock tells if a copy runs
            return OK if info["lock_held"] else NOT_RUNNING
        up = info["running"] or (info.get("periodic") and info["supervisor_pid"] is not None) or \
            bool(info["batch"] and info["batch"]["running"]) or _runs_elsewhere(info)
        return OK if up else NOT_RUNNING  # a periodic job's supervisor waiting for its due time is up
    from ..batch import submitted_names

    state_names, unlisted = _state_names(ctx)
    names = sorted(set(ctx.jobs.names()) | set(state_names) | set(submitted_names(ctx.root)))
    host = HostView.read(ctx)
    infos = collect(ctx, names, host)
    if as_json:
        echo(json.dumps(infos, indent=2))
    else:
        echo(table(infos) if infos else "no jobs on this host")
        if unlisted:
            echo(f"{unlisted}: jobs that run without a definition here (ad hoc runs) are not shown")
        squatted = _squatted_default()
        if squatted:
            echo(squatted)
        if host.cron_running is False:
            echo("warning: no cron daemon runs on this host: entries will not fire")
    return OK


def _squatted_default() -> Optional[str]:
    """A note when another user made the old default lock folder's name, /tmp/watchdog-singleton-UID."""
    import os

    legacy = f"{lock.DEFAULT_PREFIX}{os.getuid()}"
    problem = lock.folder_problem(legacy)
    if problem is None:
        return None
    return (f"note: {problem}; your jobs use a lock folder of their own instead, "
            "but another user made it there: tell the admin")


def _submitted(ctx: Context, name: str) -> bool:
    from ..batch import load_record

    return load_record(ctx.root, name) is not None


def _batch_word(info: dict[str, Any]) -> str:
    """The STATE of a batch chain: `running [slurm 123 RUNNING, 124 PENDING (Dependency)]`,
    `waiting [slurm 123 PENDING (BeginTime)]`, `stopped [slurm]` (until uninstalled), `dead [slurm:
    nothing queued]` (cancelled by hand), or why the queue is unknown."""
    b = info["batch"]
    if b["error"]:
        return f"unknown [{b['scheduler']}: {b['error']}]"
    jobs = ", ".join(f"{j['id']} {j['state']}" + (f" ({j['reason']})" if j.get("reason") else "")
                     for j in b["jobs"])
    if b["state"] == "dead":
        return f"dead [{b['scheduler']}: nothing queued]"
    return f"{b['state']} [{b['scheduler']}{' ' + jobs if jobs else ''}]"


def _state_word(info: dict[str, Any]) -> str:
    if info.get("batch"):
        return _batch_word(info)
    """The STATE column: what runs, and whether cron would keep it so (no line, a line that is off)."""
    if info["phase"] == "broken":
        return "broken"
    off = info["installed"] and not info["enabled"]
    if info["running"]:
        word = "running"
    elif info.get("periodic") and info["next_due_at"] and info["phase"] not in ("stopping",):
        # --every keeps due times to the second (under a minute too); cron's are whole minutes.
        word = f"waiting (next {info['next_due_at'][11:19 if info.get('every') else 16]})"
    elif info["phase"] == "backoff" and info["next_start_at"]:
        word = f"backoff until {info['next_start_at'][11:19]}"
    elif off and info["cron_entry"] != "missing":
        return "disabled"
    else:
        word = str(info["phase"])
    if info["installed"] and info["cron_entry"] == "missing":
        return f"{word} (no cron line)"
    return f"{word} (disabled)" if off else word


def _since(iso: Optional[str]) -> str:
    if not iso:
        return "-"
    try:
        started = time.mktime(time.strptime(iso[:19], "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        return iso
    seconds = int(time.time() - started)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def exit_word(code: Optional[int]) -> str:
    """An exit code as a person reads it: the number, or for a negative code its signal's name."""
    if code is None:
        return "-"
    if code == procs.UNKNOWN_EXIT:
        return "unknown"  # an adopted daemon's end: it was no child of its supervisor
    if code >= 0:
        return str(code)
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


def _columns(rows: Sequence[tuple[str, ...]]) -> str:
    """Rows as aligned columns; the last column is left as long as it is."""
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]) - 1)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths)) + "  " + r[-1] for r in rows)


def table(infos: list[dict[str, Any]]) -> str:
    """Daemons show their restarts and last exit; periodic jobs their runs/failures and last result."""
    rows = [("NAME", "STATE", "PID", "UP", "RESTARTS", "LAST EXIT", "SCHEDULE", "COMMAND")]
    for i in infos:
        if i.get("periodic"):
            counts = f"{i['runs']} runs/{i['failures']} failed"
            last = i["last_result"] or "-"
            schedule = f"every {i['every']:g}s" if i["every"] else str(i["schedule"])
        else:
            adhoc = f"(batch: {i['batch']['scheduler']})" if i.get("batch") else "(ad hoc)"
            code = procs.UNKNOWN_EXIT if i.get("last_exit_unknown") else i["last_exit_code"]
            counts, last, schedule = str(i["restarts"]), exit_word(code), i["schedule"] or adhoc
            if i.get("batch"):
                counts += f" ({i['runs']} run{'' if i['runs'] == 1 else 's'})"  # the chain's jobs that ran
        command = i["command"] or (i["batch"] and i["batch"]["command"]) or []
        word = _state_word(i)
        if i.get("shared") and i["supervisor_pid"]:
            word += f" (shared supervisor {i['supervisor_pid']})"
        trouble = (i.get("cluster") or {}).get("supervisor") or i.get("supervisor")
        if trouble:
            word += f" (supervisor {trouble})"  # nothing restarts it: SIGKILLed or SIGSTOPped
        rows.append((i["name"], word, str(i["pid"] or "-"), _since(i["started_at"] if i["running"] else None),
                     counts, last, schedule, shell_join(command)))
    lines = _columns(rows).split("\n")
    out = lines[:1]
    for line, i in zip(lines[1:], infos):
        out.append(line)
        if i.get("lock_problem"):
            out.append(f"  {i['lock_problem']}: this job cannot start")
        if i["phase"] == "broken":
            out.append(f"  {i['message']}")
        if i.get("cluster"):
            out.append("  " + summary(i["cluster"]))  # a cluster job: the lease as the database sees it
        if i.get("problem"):
            out.append("  " + i["problem"])  # what status could not read or trust
    return "\n".join(out)


def history_table(info: dict[str, Any]) -> str:
    """`status NAME --history`: the last runs of a periodic job, oldest first."""
    if not info.get("periodic") and not info.get("history"):
        return (f"{info['name']}: no runs to list: --history lists a periodic job's runs, and {info['name']} is kept "
                f"alive (restarted {info.get('restarts', 0)} time(s); `status {info['name']}` shows it)")
    if not info["history"]:
        return f"{info['name']}: no runs recorded"
    rows = [("DUE", "STARTED", "DURATION", "RESULT")]
    for run in info["history"]:
        duration = run.get("duration")
        result = str(run.get("result"))
        if result == "failed":
            result = f"failed ({exit_word(run.get('code'))})"
        if run.get("loops"):
            result += f", {run['loops']} loops"
        if run.get("late"):
            result += f", {run['late']:.1f}s late"
        rows.append((str(run.get("due", "-"))[:19].replace("T", " "), str(run.get("start", "-"))[11:19] or "-",
                     "-" if duration is None else f"{duration:.1f}s", result))
    summary = (f"{info['runs']} runs, {info['failures']} failed, {info['timeouts']} timed out, "
               f"{info['skipped']} skipped; next due {info['next_due_at'] or '-'}")
    return _columns(rows) + "\n" + summary
