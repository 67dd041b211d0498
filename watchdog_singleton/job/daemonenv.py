"""The daemon's environment: what a job's command sees, the same whether cron or the user's shell
started it. Used by the supervisor, by lean mode (the tick execs the command itself) and by a
notification hook. Standard library only.
"""

from __future__ import annotations

import os
import pwd

from ..envvars import CLUSTER_ENV, FENCING_TOKEN_ENV, JOB_ENV, NAME_ENV, STATE_DIR_ENV, TOKEN_ENV
from ..proc import procs

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing stays out of the resident supervisor's memory; annotations are strings
    from typing import Optional

    from .model import Job


def daemon_env(job: Job, inherit: Optional[dict[str, str]] = None, token: Optional[int] = None) -> dict[str, str]:
    """The daemon's environment: the same whether cron or the user's shell started it; with a
    cluster lease's fencing `token`, that and the database to check it with."""
    if inherit is not None:
        env = procs.clean_environ(inherit)
    else:
        user = pwd.getpwuid(os.getuid())
        env = {"HOME": user.pw_dir, "USER": user.pw_name, "LOGNAME": user.pw_name,
               "SHELL": user.pw_shell or "/bin/sh", "PATH": "/usr/local/bin:/usr/bin:/bin"}
    env.update(job.env)
    env[JOB_ENV] = env[NAME_ENV] = job.name
    env[TOKEN_ENV] = job.lock_path
    if job.state_folder:
        env[STATE_DIR_ENV] = job.state_folder
    if token is not None:
        env[FENCING_TOKEN_ENV] = str(token)
        env[CLUSTER_ENV] = job.cluster  # `lease check NAME --token ...` asks this database
    return env
