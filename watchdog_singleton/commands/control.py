"""stop, start, restart: disable and stop NAME's tree, enable and start it, or both."""

from __future__ import annotations

from ..errors import FAILED, OK, UserError
from ..job.model import Job, check_name
from .common import Context, Echo, reach_house, start_now, stop_processes


def _set_enabled(ctx: Context, job: Job, on: bool) -> None:
    job.enabled = on
    ctx.jobs.save(job)
    editor = ctx.editor()
    if not editor.set_enabled(job.name, on) and on:
        # The line was removed or commented out by hand: put a fresh one from the definition.
        editor.set_entry(job.name, ctx.cron_line(job))


def _chain(ctx: Context, name: str) -> bool:
    """NAME is a submitted batch chain (and no installed job): the scheduler runs it, not cron."""
    from ..batch import load_record

    return ctx.jobs.load(check_name(name)) is None and load_record(ctx.root, name) is not None


def stop(name: str, ctx: Context, echo: Echo) -> int:
    if _chain(ctx, name):
        from ..batch.chain import stop_chain

        echo(stop_chain(ctx.root, name))  # the scheduler ends it; it shows as stopped until uninstalled
        return OK
    job, state = ctx.known(name)
    reach_house(state)  # a shared job's live resident must answer first, or nothing changes
    if job is not None:
        job.enabled = False
        ctx.jobs.save(job)  # the launcher reads this: no tick starts NAME again, whatever its line
    lock_path = job.lock_path if job else (state.lock_path if state else "")
    grace = job.grace if job else 10.0
    # Stopping never depends on being allowed to edit the crontab (cron.deny): stop first.
    found = stop_processes(lock_path, state, grace)
    done = f"stopped {name}" if found else f"{name} was not running"
    if job is not None:
        try:
            ctx.editor().set_enabled(name, False)
        except UserError as exc:
            raise UserError(f"{done} and disabled it, but its crontab line is unchanged: {exc}", FAILED) from None
    echo(done if found else f"{done}; its entry is disabled")
    return OK


def start(name: str, ctx: Context, echo: Echo) -> int:
    if _chain(ctx, name):
        from ..batch.chain import start_chain

        echo(start_chain(ctx.root, name))  # its script, submitted again
        return OK
    job = ctx.jobs.load(name)
    if job is None:
        raise ctx.jobs.no_such_job(name, "install it first")
    _set_enabled(ctx, job, True)
    echo(start_now(ctx, job, "its entry stays enabled: cron tries again at the next tick"))
    return OK


def restart(name: str, ctx: Context, echo: Echo) -> int:
    if _chain(ctx, name):
        from ..batch.chain import start_chain, stop_chain

        echo(stop_chain(ctx.root, name))
        echo(start_chain(ctx.root, name))
        return OK
    job = ctx.jobs.load(name)
    if job is None:
        raise ctx.jobs.no_such_job(name, "install it first")
    stop_processes(job.lock_path, ctx.states.load(name), job.grace)
    return start(name, ctx, echo)
