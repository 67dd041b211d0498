"""export: write this host's jobs (all, or NAME...) as a file that `apply` takes back unchanged."""

from __future__ import annotations

from .. import config, paths
from ..errors import OK
from ..jobs import check_name
from .common import Context, Echo


def export(names: list[str], ctx: Context, echo: Echo) -> int:
    chosen = [check_name(name) for name in names] or sorted(ctx.jobs.names())
    jobs = [ctx.jobs.get(name) for name in chosen]  # an unknown NAME: exit 4 before anything is printed
    echo(config.dump(jobs, paths.default_log_dir(ctx.root), paths.default_lock_dir()).rstrip("\n"))
    return OK
