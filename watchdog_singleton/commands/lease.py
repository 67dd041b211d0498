"""lease check, lease status: a cluster lease as the database sees it now.

`lease check NAME --token N` is what a daemon runs before a write it must fence: 0 while N is
NAME's current grant, 1 once it is stale, 2 on bad input, 3 when the database cannot be reached
(then the daemon must not assume it still holds the lease either), 4 when the database never
heard of NAME. Inside the daemon it needs no option: the supervisor gives the daemon its job's
database in $WATCHDOG_SINGLETON_CLUSTER beside the token. From a shell, an installed NAME's
own database is the default.
"""

from __future__ import annotations

import json
from typing import Callable, Optional

from ..cluster import MAX_TOKEN, LeaseError, cluster_url
from ..cluster.engines import is_postgres_url, open_cluster
from ..envvars import CLUSTER_ENV
from ..errors import NO_SUCH_JOB, OK, STALE, USAGE, UserError
from ..job.model import check_name
from .cluster import held_words

Echo = Callable[[str], None]


def job_url(name: str, given: Optional[str]) -> str:
    """--cluster, else $WATCHDOG_SINGLETON_CLUSTER, else the cluster NAME was installed with here."""
    import os

    if given or os.environ.get(CLUSTER_ENV):
        return cluster_url(given)
    from .common import Context

    try:
        job = Context.default().jobs.load(name)
    except (UserError, OSError):
        job = None
    if job is not None and job.cluster:
        return job.cluster
    raise UserError(f"no cluster database: pass --cluster postgresql://... or set {CLUSTER_ENV} "
                    f"({name} is not a cluster job installed on this host)", USAGE)


def checked_url(name: str, given: Optional[str]) -> str:
    """job_url, and a URL libpq cannot parse is bad input (exit 2), not an unreachable database (3)."""
    from ..cluster.postgres import url_problem

    url = job_url(name, given)
    problem = url_problem(url) if is_postgres_url(url) else ""
    if problem:
        raise UserError(problem, USAGE)
    return url


def unknown(name: str) -> str:
    return f"no such job: no lease named {name} in the cluster database"


def check(name: str, token: int, cluster: Optional[str], warn: Echo) -> int:
    check_name(name)
    if not 1 <= token <= MAX_TOKEN:
        raise UserError(f"--token {token} is out of range: 1 to {MAX_TOKEN}", USAGE)
    engine = open_cluster(checked_url(name, cluster))
    try:
        if engine.check(name, token):
            return OK
        info = engine.status(name)  # asked only on the way out: a check that holds costs one query
        if info is None:
            warn(f"watchdog-singleton: {unknown(name)}")
            return NO_SUCH_JOB
        latest = info.token
        if latest is not None and token > latest:  # refused all the same: it fences nothing
            warn(f"watchdog-singleton: token {token} of {name} was never granted: the latest grant is {latest} "
                 "(a token from another database?)")
        else:
            warn(f"watchdog-singleton: token {token} of {name} is stale: {held_words(info.to_dict())}")
        return STALE
    except LeaseError as exc:
        warn(f"watchdog-singleton: {exc}")
        return exc.exit_code
    finally:
        engine.close()


def status(name: str, cluster: Optional[str], echo: Echo, warn: Echo, as_json: bool) -> int:
    check_name(name)
    engine = open_cluster(checked_url(name, cluster))
    try:
        info = engine.status(name)
    except LeaseError as exc:
        warn(f"watchdog-singleton: {exc}")
        return exc.exit_code
    finally:
        engine.close()
    if info is None:
        warn(f"watchdog-singleton: {unknown(name)}")
        return NO_SUCH_JOB
    if as_json:
        echo(json.dumps(info.to_dict(), indent=2))
        return OK
    if info.token is not None:
        echo(f"{name}: {held_words(info.to_dict())}")  # the words of `status`'s cluster line
    if info.last_start is not None:
        echo(f"{name}: last sync start {info.last_start} (run {info.slot})")
    return OK
