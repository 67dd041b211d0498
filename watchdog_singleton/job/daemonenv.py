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


def account() -> pwd.struct_passwd:
    """Our passwd entry. The lookup opens /etc/passwd (or asks NSS): with no descriptor left it
    fails as a KeyError, as if we had no user; that failure is named for what it is."""
    try:
        return pwd.getpwuid(os.getuid())
    except KeyError:
        try:
            os.close(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
        except OSError as exc:  # EMFILE, ENFILE: the lookup could not open its files
            raise OSError(exc.errno, f"cannot read the user database: {exc.strerror}") from None
        raise


def daemon_env(job: Job, inherit: Optional[dict[str, str]] = None, token: Optional[int] = None) -> dict[str, str]:
    """The daemon's environment: the same whether cron or the user's shell started it; with a
    cluster lease's fencing `token`, that and the database to check it with."""
    if inherit is not None:
        env = procs.clean_environ(inherit)
    else:
        user = account()
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
