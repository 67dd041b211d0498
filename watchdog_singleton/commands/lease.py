"""lease check, lease status: a cluster lease as the database sees it now.

`lease check NAME --token N` is what a daemon runs before a write it must fence: 0 while N is
NAME's current grant, 1 once it is stale, 2 on bad input, 3 when the database cannot be reached
(then the daemon must not assume it still holds the lease either).
"""

from __future__ import annotations

import json
from typing import Callable, Optional

from ..errors import NO_SUCH_JOB, OK, USAGE, UserError
from ..jobs import check_name
from ..leases import MAX_TOKEN, LeaseError, cluster_url, open_cluster

STALE = 1

Echo = Callable[[str], None]


def check(name: str, token: int, cluster: Optional[str], warn: Echo) -> int:
    check_name(name)
    if not 1 <= token <= MAX_TOKEN:
        raise UserError(f"--token {token} is out of range: 1 to {MAX_TOKEN}", USAGE)
    engine = open_cluster(cluster_url(cluster))
    try:
        if engine.check(name, token):
            return OK
        warn(f"watchdog-singleton: token {token} of {name} is stale")
        return STALE
    except LeaseError as exc:
        warn(f"watchdog-singleton: {exc}")
        return exc.exit_code
    finally:
        engine.close()


def status(name: str, cluster: Optional[str], echo: Echo, warn: Echo, as_json: bool) -> int:
    check_name(name)
    engine = open_cluster(cluster_url(cluster))
    try:
        info = engine.status(name)
    except LeaseError as exc:
        warn(f"watchdog-singleton: {exc}")
        return exc.exit_code
    finally:
        engine.close()
    if info is None:
        warn(f"watchdog-singleton: no lease named {name} in the cluster database")
        return NO_SUCH_JOB
    if as_json:
        echo(json.dumps(info.to_dict(), indent=2))
        return OK
    if info.token is not None:
        state = f"held by {info.holder}, {info.seconds_left:.0f} s left" if info.live else \
            f"free (last holder {info.holder})"
        echo(f"{name}: {state}; token {info.token}; expires {info.expires_at}")
    if info.last_start is not None:
        echo(f"{name}: last sync start {info.last_start} (run {info.slot})")
    return OK
