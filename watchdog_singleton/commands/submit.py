"""submit: keep NAME alive through a batch system (Slurm, PBS, HTCondor) instead of cron."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from typing import Optional

from .. import batch, files, paths
from ..batch import schedulers
from ..envvars import CLUSTER_ENV
from ..errors import FAILED, OK, UserError
from ..job.build import build_job
from ..job.clusteropts import NO_CLUSTER
from ..job.model import Job
from ..job.options import OPTIONS, SUBMIT
from ..timefmt import now_iso
from .cluster import check_cron_driver, driver_problem
from .common import Context, Echo

MAX_SLURM_LEAD = 65535  # --signal's @TIME is 16 bits


@dataclass
class SubmitRequest:
    """What submit is asked; the options it shares with install default as options.py says."""

    name: str
    command: list[str]
    scheduler: str
    walltime: str = "24:00:00"
    account: str = ""
    queue: str = ""
    signal_lead: Optional[int] = None  # None: batch.default_lead (300 s, less for a short walltime)
    grace: float = OPTIONS["grace"].default
    extra: list[str] = field(default_factory=list)
    dry_run: bool = False
    workdir: Optional[str] = None
    cluster: Optional[str] = None  # None: $WATCHDOG_SINGLETON_CLUSTER; "none": no lease
    lease: Optional[float] = None
    standby: bool = OPTIONS["standby"].default
    rotate: bool = OPTIONS["rotate"].default
    on_failure: Optional[str] = None  # notify.py: when the chain ends for good (not by `stop`)
    mail: str = OPTIONS["mail"].default
    notify_every: float = OPTIONS["notify_every"].default


def runner(python: str) -> list[str]:
    """How the batch script calls us: the interpreter that submitted, with its isolation flag."""
    flag = paths.isolation_flag() if python == sys.executable else ""
    return [python, *([flag] if flag else []), "-m", "watchdog_singleton"]


def submit_job(req: SubmitRequest, ctx: Context, environ: dict[str, str]) -> Job:
    """The job the chain runs: the one build (job/build.py) of submit's options. Its lock is the
    batch node's (batch.LOCK_DIR_EXPR), so it has none here."""
    return build_job(req, ctx.root, environ, command=SUBMIT, driver=driver_problem)


def build_spec(req: SubmitRequest, ctx: Context) -> tuple[batch.Scheduler, batch.Spec]:
    """Check everything; a UserError (exit 2, one line) before anything is written or submitted.
    The job's options are checked by its build; the chain's own (scheduler, walltime, signal
    lead, account, queue, --extra) here."""
    environ = dict(os.environ)
    job = submit_job(req, ctx, environ)
    sched = schedulers.get(req.scheduler)
    walltime = batch.parse_walltime(req.walltime)
    lead = req.signal_lead
    if lead is None:
        lead = batch.default_lead(walltime, job.grace)
        if lead >= walltime:
            raise UserError(f"--walltime {req.walltime}: too short to warn the daemon before its end (it needs "
                            f"more than --grace {job.grace:g} s + 20 s); give a longer walltime or a smaller --grace")
    if lead <= 0 or lead >= walltime:
        raise UserError(f"--signal-lead {lead}: must be more than 0 and less than the walltime ({walltime} s)")
    if lead <= job.grace:
        raise UserError(f"--signal-lead {lead}: must be longer than --grace ({job.grace:g} s), or the "
                        "walltime kill comes before the daemon's grace is over")
    if sched.name == "slurm" and lead > MAX_SLURM_LEAD:
        raise UserError(f"--signal-lead {lead}: Slurm takes at most {MAX_SLURM_LEAD}")
    for directive in req.extra:
        if "\n" in directive or "\r" in directive:
            raise UserError(f"--extra {directive!r} holds a newline")
    for value, option in ((req.account, "--account"), (req.queue, "--queue")):
        if value and (not value.strip() or any(c.isspace() or c in "\"'\\" for c in value)):
            raise UserError(f"{option} {value!r}: no spaces or quotes")
    cluster = job.cluster
    if cluster:
        check_cron_driver(ctx.python, ctx.isolation())  # the script's run line uses the same interpreter
    elif environ.get(CLUSTER_ENV):
        cluster = NO_CLUSTER  # the batch node may see the variable (Slurm exports our environment)
    missing = sched.missing_tools()
    if missing and not req.dry_run:
        raise UserError(f"--scheduler {sched.name}: {', '.join(missing)} not found on PATH")
    spec = batch.Spec(name=job.name, command=job.command, workdir=job.workdir, root=ctx.root,
                      runner=runner(ctx.python), walltime=walltime, signal_lead=lead, grace=job.grace,
                      account=req.account, queue=req.queue, extra=list(req.extra), env=job.env, cluster=cluster,
                      lease=job.lease, standby=job.standby, rotate=job.rotate, on_failure=job.on_failure,
                      mail=job.mail, notify_every=job.notify_every)
    return sched, spec


def write_files(sched: batch.Scheduler, spec: batch.Spec) -> str:
    """Write the script (and wrapper) under NAME's batch folder; the path of the one to submit."""
    files.ensure_dir(spec.folder)
    files.ensure_dir(spec.log_dir)
    for filename, text in sched.render(spec).items():
        path = os.path.join(spec.folder, filename)
        files.write_atomic(path, text.encode())
        os.chmod(path, 0o700)
    return os.path.join(spec.folder, sched.script)


def submit(req: SubmitRequest, ctx: Context, echo: Echo, warn: Echo) -> int:
    sched, spec = build_spec(req, ctx)
    if req.dry_run:
        for filename, text in sched.render(spec).items():
            echo(f"# ---- {os.path.join(spec.folder, filename)} (not written: --dry-run)")
            echo(text.rstrip("\n"))
        return OK
    queued = sched.entries(spec.job_name)
    if queued and sched.name != "slurm":
        jobs = ", ".join(f"{e.id} ({e.state})" for e in queued)
        raise UserError(f"{req.name} is already queued or running as {sched.name} job {jobs}: not submitting a "
                        f"second chain (stop it first: watchdog-singleton stop {req.name})", FAILED)
    script = write_files(sched, spec)
    # A new chain: an old stop marker must not end it. (A chain still draining is in `queued`.)
    files.remove(spec.stop_marker)
    ids = sched.submit(spec, script)
    record = batch.load_record(ctx.root, req.name) or {}
    earlier = list(record.get("jobs", [])) if queued and record.get("scheduler") == sched.name else []
    batch.save_record(ctx.root, req.name, {
        "name": spec.name, "scheduler": sched.name, "jobs": earlier + ids, "script": script,
        "submitted_at": now_iso(), "command": spec.command, "workdir": spec.workdir, "root": spec.root,
        "runner": spec.runner, "walltime": spec.walltime, "signal_lead": spec.signal_lead, "grace": spec.grace,
        "stdout_log": spec.stdout_log, "stderr_log": spec.stderr_log, "cluster": spec.cluster, "lease": spec.lease,
        "standby": spec.standby, "rotate": spec.rotate, "on_failure": spec.on_failure, "mail": spec.mail,
        "notify_every": spec.notify_every})
    echo(f"submitted {req.name} to {sched.name}: job {', '.join(ids)} ({script})")
    if queued:
        jobs = ", ".join(f"{e.id} ({e.state})" for e in queued)
        warn(f"{req.name} already has slurm job {jobs}: job {', '.join(ids)} waits behind it "
             "(--dependency=singleton) and runs only when no other job of the chain runs")
    return OK
