"""apply: make this host's jobs match a TOML file, restarting only what must restart."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Optional

from .. import config
from ..cron.crontab import CrontabEditor, disabled, parse_entries, with_entry
from ..cron.hostinfo import cron_daemon_running
from ..errors import FAILED, OK, UserError
from ..job.model import Job
from ..lock.flock import commit_lock_dir
from .cluster import check_cron_driver
from .common import Context, Echo, not_reloaded, start_now, stop_processes, tell_to_reload
from .install import build_job, needs_restart, replace_running_copy

ACTIONS = ("create", "update", "restart", "remove", "unchanged")
# Job fields as the file names them, for the plan's CHANGES column
SHOWN = {"every": "period", "enabled": "enable", "stdout_log": "log_dir", "stderr_log": "log_dir"}


@dataclass
class Step:
    action: str
    name: str
    job: Optional[Job]  # the new definition; None for remove
    previous: Optional[Job]  # what is installed now
    line: Optional[bytes]  # the crontab line wanted; None for remove
    changes: list[str]

    @property
    def starts(self) -> bool:
        if self.job is None or not self.job.enabled:
            return False
        return self.action in ("create", "restart") or (
            self.action == "update" and self.previous is not None and not self.previous.enabled)

    @property
    def stops(self) -> bool:
        """Stop what runs: the old copy of a restart, a job that `enable = false` turns off, a removed job."""
        if self.action in ("restart", "remove"):
            return True
        return self.action == "update" and self.job is not None and not self.job.enabled and bool(
            self.previous and self.previous.enabled)


def changed_fields(old: Job, new: Job) -> list[str]:
    mine, theirs = old.to_dict(), new.to_dict()
    shown: list[str] = []
    for key in mine:
        if key != "installed_at" and mine[key] != theirs.get(key):
            name = SHOWN.get(key, key)
            if name not in shown:
                shown.append(name)
    return shown


def make_plan(cfg: config.ConfigFile, ctx: Context, environ: dict[str, str], crontab: bytes) -> list[Step]:
    """Every job of the file built and checked as install would (nothing changes here), then
    compared with what is installed and with the crontab."""
    entries = parse_entries(crontab)
    steps: list[Step] = []
    listed = set()
    for spec in cfg.jobs:
        try:
            job = build_job(cfg.request(spec), ctx, environ)
        except UserError as exc:  # at the line of the key it is about
            raise config.error_of(cfg.path, spec, exc) from None
        if job.cluster:
            try:
                check_cron_driver(ctx.python, ctx.isolation())
            except UserError as exc:
                raise cfg.error(spec, "cluster", str(exc)) from None
        listed.add(job.name)
        job.enabled = spec.enable
        previous = ctx.jobs.load(job.name)
        # A job belongs to the file whose apply created it, or to the user who installed it by
        # hand: only that file's apply ever removes it.
        job.applied_from = previous.applied_from if previous is not None else cfg.path
        line = ctx.cron_line(job)
        if not job.enabled:
            line = disabled(line)
        if previous is None:
            steps.append(Step("create", job.name, job, None, line, []))
            continue
        job.installed_at = previous.installed_at or job.installed_at
        changes = changed_fields(previous, job)
        entry = entries.get(job.name)
        if (entry is None or entry.line != line) and not changes:
            changes.append("crontab line")
        if not changes:
            action = "unchanged"
        elif job.enabled and previous.enabled and needs_restart(previous, job):
            action = "restart"
        else:
            action = "update"
        steps.append(Step(action, job.name, job, previous, line, changes))
    for name in sorted(ctx.jobs.names()):
        if name in listed:
            continue
        previous = ctx.jobs.load(name)
        if previous is not None and previous.applied_from == cfg.path:
            steps.append(Step("remove", name, None, previous, None, ["no longer in the file"]))
    return steps


def plan_table(steps: list[Step]) -> list[str]:
    rows = [("ACTION", "JOB", "CHANGES")] + [(s.action, s.name, ", ".join(s.changes)) for s in steps]
    widths = [max(len(r[i]) for r in rows) for i in range(2)]
    table = [f"{a:<{widths[0]}}  {n:<{widths[1]}}  {c}".rstrip() for a, n, c in rows]
    counts = ", ".join(f"{sum(s.action == a for s in steps)} {a}" for a in ACTIONS)
    return table + [f"plan: {counts}"]


def apply(path: str, ctx: Context, echo: Echo, warn: Echo, dry_run: bool = False,
          environ: Optional[dict[str, str]] = None, allow_empty: bool = False) -> int:
    cfg = config.load(path)
    if not cfg.jobs and not allow_empty:
        refuse_empty(cfg, ctx)
    editor = ctx.editor()
    crontab = editor.io.read()  # the one read of the no-op path; also says early if crontab(1) refuses
    steps = make_plan(cfg, ctx, dict(os.environ) if environ is None else environ, crontab)
    for line in plan_table(steps):
        echo(line)
    removed = [s.name for s in steps if s.action == "remove"]
    if removed:
        warn(f"{'apply would remove' if dry_run else 'removing'} {len(removed)} job(s) no longer in "
             f"{cfg.path}: {', '.join(removed)}")
    if dry_run:
        echo("dry run: nothing changed")
        return OK
    acting = [s for s in steps if s.action != "unchanged"]
    if not acting:
        echo("nothing to change")
        return OK
    write_definitions(ctx, acting, editor)
    for step in acting:
        if step.stops:
            assert step.previous is not None
            stop_processes(step.previous.lock_path, ctx.states.load(step.name), step.previous.grace)
        if step.action == "remove":
            ctx.states.delete(step.name)
            echo(f"removed {step.name}")
        elif step.action == "create" and not step.starts:
            echo(f"installed {step.name} (enable = false: not started)")
        elif step.action == "update":
            # A running supervisor takes the settings that need no restart at once, as after install.
            told = None if step.stops or step.starts else tell_to_reload(ctx.states.load(step.name))
            echo(f"updated {step.name}" + ("; stopped it (enable = false)" if step.stops else
                                          "; it runs on with the new settings" if told else ""))
            if told is False:
                warn(not_reloaded(step.name))
    failed = start_all(ctx, [s for s in acting if s.starts], echo, warn)
    if cron_daemon_running() is False:
        warn("warning: no cron daemon runs on this host: the entries will not fire until one does")
    return FAILED if failed else OK


def refuse_empty(cfg: config.ConfigFile, ctx: Context) -> None:
    """A file with no job is most often one emptied by mistake: applying it would remove every
    job an earlier apply of it created, so it takes --allow-empty."""
    jobs = [ctx.jobs.load(name) for name in sorted(ctx.jobs.names())]
    owned = [job.name for job in jobs if job is not None and job.applied_from == cfg.path]
    what = f"applying it would remove {len(owned)} job(s): {', '.join(owned)}" if owned else "nothing to apply"
    raise UserError(f"{cfg.path} defines no job ([jobs.NAME] tables); {what}. "
                    f"Use apply --allow-empty to apply it anyway")


def write_definitions(ctx: Context, acting: list[Step], editor: CrontabEditor) -> None:
    """Save every new definition, delete removed ones, then change all the lines in one crontab
    write; if that write fails, the definitions are put back as they were."""
    done: list[Step] = []
    try:
        for step in acting:
            if step.job is not None:
                chosen = commit_lock_dir(ctx.root, step.job.lock_dir)  # the default folder, made now
                if chosen != step.job.lock_dir:  # another process chose it first: that one
                    step.job.lock_dir = chosen
                    line = ctx.cron_line(step.job)
                    step.line = line if step.job.enabled else disabled(line)
                ctx.jobs.save(step.job)
            else:
                ctx.jobs.delete(step.name)
            done.append(step)

        def change(text: bytes) -> bytes:
            for step in acting:
                text = with_entry(text, step.name, step.line)
            return text

        editor.edit(change)
    except BaseException:
        for step in done:
            if step.previous is None:
                ctx.jobs.delete(step.name)
            else:
                ctx.jobs.save(step.previous)
        raise


def start_all(ctx: Context, steps: list[Step], echo: Echo, warn: Echo) -> int:
    """Start the jobs at once, in parallel (each waits its settle time); return how many failed."""
    def one(step: Step) -> tuple[bool, str]:
        assert step.job is not None
        notes: list[str] = []
        try:
            if step.action == "create":  # a copy left by `uninstall --keep-running`: adopt or stop it
                replace_running_copy(ctx, step.job, None, notes.append, notes.append)
            notes.append(start_now(ctx, step.job, f"{step.name} stays installed: cron tries again at the next tick"))
            return True, "\n".join(notes)
        except UserError as exc:
            return False, "\n".join(notes + [f"watchdog-singleton: {exc}"])

    if not steps:
        return OK
    with ThreadPoolExecutor(max_workers=min(16, len(steps))) as pool:
        results = list(pool.map(one, steps))
    for ok, text in results:
        (echo if ok else warn)(text)
    return sum(not ok for ok, _ in results)
