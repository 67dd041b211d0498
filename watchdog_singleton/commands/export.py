"""export: write this host's jobs (all, or NAME...) as a file that `apply` takes back unchanged."""

from __future__ import annotations

import os

from .. import config, paths
from ..errors import OK
from ..jobs import check_name
from .common import Context, Echo


def export(names: list[str], ctx: Context, echo: Echo) -> int:
    chosen = [check_name(name) for name in names] or sorted(ctx.jobs.names())
    jobs = [ctx.jobs.get(name) for name in chosen]  # an unknown NAME: exit 4 before anything is printed
    # Our own default folders are left out of the file (lock.is_own_default); a folder set by
    # WATCHDOG_SINGLETON_LOCK_DIR is the default of the shell that exports.
    override = os.path.abspath(os.environ[paths.LOCK_DIR_ENV]) if os.environ.get(paths.LOCK_DIR_ENV) else ""
    echo(config.dump(jobs, paths.default_log_dir(ctx.root), override).rstrip("\n"))
    return OK
