"""import: take over the user's hand-written cron lines (flock -n, run-one, keep-one-running;
plain lines only when named with --line N or with --all).

Without --apply it only shows, line by line, the job each line would become and why the others
are left alone. With --apply it replaces exactly those lines by our entries in one crontab edit
(every other byte stays), installs the jobs and starts the daemons that do not run yet. A copy
that still runs under an old line's lock is adopted: its pid is recorded as the job's running
daemon, so no tick starts a second copy; `status`, `stop` and `uninstall` see and stop it, and
the first tick after it exits starts the new job.
"""

from __future__ import annotations

import os
import pwd
from dataclasses import dataclass
from typing import Optional, Sequence

from ..cron.crontab import parse_entries, replace_lines
from ..cron.oldlines import TAG_RE, LeftAlone, Proposal, scan
from ..errors import FAILED, OK, UserError, one_line
from ..job.model import Job
from ..job.request import InstallRequest
from ..lock.flock import commit_lock_dir, is_held
from ..proc import procs
from ..quoting import shell_join
from ..state.phases import Phase
from ..state.store import RunState
from ..timefmt import now_iso
from .common import Context, Echo, start_now
from .install import build_job


@dataclass
class Plan:
    proposal: Proposal
    request: InstallRequest
    job: Job


def request_for(p: Proposal) -> InstallRequest:
    env = [f"{k}={v}" for k, v in p.env.items()]
    if p.keep_alive:
        return InstallRequest(name=p.name, command=p.command, schedule=p.schedule, workdir=p.workdir, env=env,
                              restart="always", stdout_log=p.stdout_log, stderr_log=p.stderr_log, mail=p.mail)
    return InstallRequest(name=p.name, command=p.command, schedule=p.schedule, workdir=p.workdir, env=env,
                          periodic=True, start=False, stdout_log=p.stdout_log, stderr_log=p.stderr_log, mail=p.mail)


def install_words(plan: Plan) -> str:
    """The install command that makes the same job, for the user to read (and keep)."""
    req, job = plan.request, plan.job
    words = ["watchdog-singleton", "install", job.name]
    if req.periodic:
        words += ["--periodic", "--schedule", job.schedule]
    elif job.schedule != "* * * * *":
        words += ["--schedule", job.schedule]
    words += ["--workdir", job.workdir]
    for item in req.env:
        words += ["--env", item]
    if req.stdout_log:
        words += ["--stdout-log", job.stdout_log]
    if req.stderr_log:
        words += ["--stderr-log", job.stderr_log]
    if job.mail:
        words += ["--mail", job.mail]  # the crontab's MAILTO: failures are mailed as cron mailed output
    return shell_join(words + ["--", *job.command])


def cron_environ(p: Proposal) -> dict[str, str]:
    """What the old line's command saw of the variables install keeps: cron's PATH, and the
    crontab's own settings (LANG, PYTHONPATH, ...), not this shell's."""
    environ = {"PATH": p.path}
    environ.update({k: v for k, v in p.env.items()})
    return environ


def running_argv(table: dict[int, procs.Proc], argvs: list[list[str]]) -> set[int]:
    """Our processes whose command line is one of `argvs` (a run-one copy: its lock folder
    varies between versions)."""
    wanted = {"\0".join(a).encode() for a in argvs}
    found = set()
    for info in table.values():
        if info.uid != os.getuid() or info.gone:
            continue
        try:
            with open(f"/proc/{info.pid}/cmdline", "rb") as f:
                if f.read().rstrip(b"\0") in wanted:
                    found.add(info.pid)
        except OSError:
            continue
    return found


def old_copy(lock: Optional[str], argvs: list[list[str]]) -> tuple[Optional[int], str]:
    """(pid, "") of the oldest process of ours at the top of the tree holding `lock` (or, with
    the lock free, running one of `argvs`), or (None, why none can be adopted)."""
    table = procs.scan()
    if lock and is_held(lock):
        holders = procs.holding_file(table, lock) - {os.getpid()}
        if not holders:
            return None, f"the old lock {lock} is held by a process of another user; nothing of yours to adopt"
    else:
        holders = running_argv(table, argvs)

    def top(pid: int) -> bool:
        parent = table[pid].ppid if pid in table else 0
        while parent in table and parent > 1:
            if parent in holders:
                return False
            parent = table[parent].ppid
        return True

    roots = sorted((table[p].start, p) for p in holders if p in table and top(p))
    return (roots[0][1] if roots else None), ""


def shown_line(line: bytes) -> str:
    """A crontab line fit for a terminal: control bytes escaped, invalid UTF-8 as \\xNN. One of
    our own lines (some 400 bytes of launcher) is shown by its job's name."""
    text = line.decode(errors="backslashreplace")
    tag = TAG_RE.search(text)
    if tag:
        off = " (disabled)" if text.startswith("#disabled ") else ""
        return f"job {tag.group(0).split(':', 1)[1]}{off}"
    return one_line(text)


def takes_over(result: Proposal, named: set[int], take_all: bool) -> bool:
    """Lines that guard themselves (flock -n, run-one, keep-one-running) are taken over; a plain
    line only when named (--line N) or with --all: its output goes to cron's mail today, and the
    README promises that no line we did not write changes unasked."""
    if named:
        return result.lineno in named
    return take_all or result.kind != "plain"


def import_lines(ctx: Context, echo: Echo, warn: Echo, apply: bool, lines: Sequence[int] = (),
                 take_all: bool = False) -> int:
    if lines and take_all:
        raise UserError("give --line N or --all, not both")
    named = set(lines)
    for n in sorted(named):
        if n < 1:
            raise UserError(f"--line {n}: line numbers start at 1")
    me = pwd.getpwuid(os.getuid())
    home = me.pw_dir  # what cron sets HOME to (unless the crontab sets it)
    editor = ctx.editor()
    text = editor.io.read()
    taken = set(ctx.jobs.names()) | set(parse_entries(text))
    results = scan(text, home, me.pw_name, taken)
    found = {r.lineno: r for r in results}
    for n in sorted(named):  # every named line must be one we can take over: else nothing is done
        result = found.get(n)
        if result is None:
            raise UserError(f"--line {n}: no job line there (blank, a comment, or past the end)")
        if isinstance(result, LeftAlone):
            raise UserError(f"--line {n} cannot be taken over: {result.reason}")
    report: list[tuple[Echo, str]] = []  # printed once every check passed
    plans: list[Plan] = []
    for result in results:
        shown = shown_line(result.line)
        if isinstance(result, LeftAlone):
            report.append((echo, f"line {result.lineno}: left alone ({result.reason}): {shown}"))
            continue
        if not takes_over(result, named, take_all):
            why = ("not named by --line" if named else
                   "it guards nothing itself, and its output goes to cron's mail; "
                   f"--line {result.lineno} or --all takes it over")
            report.append((echo, f"line {result.lineno}: left alone ({why}): {shown}"))
            continue
        request = request_for(result)
        try:
            job = build_job(request, ctx, cron_environ(result))
        except UserError as exc:
            if result.lineno in named:
                raise UserError(f"--line {result.lineno} cannot be taken over: {exc}") from None
            report.append((echo, f"line {result.lineno}: left alone ({exc}): {shown}"))
            continue
        plan = Plan(result, request, job)
        plans.append(plan)
        kind = "periodic" if request.periodic else "kept alive"
        report.append((echo, f"line {result.lineno}: {shown}"))
        report.append((echo, f"  becomes {job.name} ({kind}, {result.kind} line): {install_words(plan)}"))
        logs = (f"stdout and stderr to {job.stdout_log}" if job.stdout_log == job.stderr_log
                else f"stdout to {job.stdout_log}, stderr to {job.stderr_log}")
        report.append((echo, f"  logs: {one_line(logs)}"))
        for note in result.notes:
            report.append((echo, f"  note: {one_line(note)}"))
        for warning in result.warnings:
            report.append((warn, f"warning: line {result.lineno}: {one_line(warning)}"))
    for out, message in report:
        out(message)
    if not plans:
        echo("no line to take over")
        return OK
    if not apply:
        echo(f"nothing changed: 'watchdog-singleton import --apply' takes over {len(plans)} line(s)")
        return OK
    return apply_plans(ctx, plans, echo, warn)


def apply_plans(ctx: Context, plans: list[Plan], echo: Echo, warn: Echo) -> int:
    """Install every plan's job in place of its line, in one crontab edit; adopt old copies.

    The definitions are saved disabled until the edit is made and the old copies are recorded,
    so a tick of a new line in between starts nothing."""
    editor = ctx.editor()
    pairs = []
    for plan in plans:
        plan.job.lock_dir = commit_lock_dir(ctx.root, plan.job.lock_dir)
        plan.job.enabled = False
        pairs.append((plan.proposal.line, ctx.cron_line(plan.job)))
    saved: list[str] = []
    try:
        for plan in plans:
            ctx.jobs.save(plan.job)
            saved.append(plan.job.name)
        editor.edit(lambda text: replace_lines(text, pairs))
    except BaseException:
        for name in saved:
            ctx.jobs.delete(name)
        raise
    adopted: dict[str, int] = {}
    for plan in plans:
        # run-one allows one copy per command line, so the same command line running is its copy.
        argvs = [plan.proposal.command, plan.job.command] if plan.proposal.kind in ("run-one", "keep-one-running") \
            else []
        pid, why = old_copy(plan.proposal.lock, argvs)
        if why:
            warn(f"warning: {plan.job.name}: {why}")
        start = procs.start_time(pid) if pid else None
        if pid and start is not None:
            adopted[plan.job.name] = pid
            job = plan.job
            ctx.states.save(RunState(
                name=job.name, phase=Phase.RUNNING, boot_id=procs.boot_id(), pid=pid, pid_start=start,
                started_at=now_iso(), command=job.command, lock_path=job.lock_path, stdout_log=job.stdout_log,
                stderr_log=job.stderr_log, lean=True,
                message=f"adopted: the copy started by the old crontab line {plan.proposal.lineno}"))
        plan.job.enabled = True
        ctx.jobs.save(plan.job)
    code = OK
    for plan in plans:
        job = plan.job
        echo(f"installed {job.name} in place of line {plan.proposal.lineno}")
        if job.name in adopted:
            echo(f"{job.name}: adopted the old copy (pid {adopted[job.name]}, started by the old line): no second "
                 f"copy starts; the first tick after it exits starts {job.name} "
                 f"('watchdog-singleton restart {job.name}' switches now)")
        elif plan.request.periodic:
            echo(f"{job.name}: first run at its next due time ({job.schedule})")
        else:
            try:
                echo(start_now(ctx, job, f"{job.name} stays installed: cron tries again at the next tick"))
            except UserError as exc:
                warn(f"watchdog-singleton: {exc}")
                code = FAILED
    return code
