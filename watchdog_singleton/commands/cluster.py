"""What install, submit, apply and status share about cluster jobs: checking --cluster and its
companions (never by connecting), and reading each cluster job's lease for `status`.

    url, lease = check_options(given, lease, standby, rotate, sync, periodic, environ)
    view = ClusterView()                      # one connection per database, for one status call
    view.read(job_name, url, fresh)           # {"holder": ..., "token": ..., "hosts": [...]} or a problem

Nothing here connects while checking input: a URL is checked by its shape (job/clusteropts.py,
as every job's build does), and psycopg by importing it, here and in the interpreter cron runs.
"""

from __future__ import annotations

import os
import subprocess
from typing import Any, Optional

from .. import paths
from ..cluster import CRON_TICK, LeaseError, Timing, fresh_window, redact
from ..cluster.engines import open_cluster
from ..errors import UserError
from ..job.clusteropts import check_cluster

STATUS_ATTEMPT = 2.0  # seconds status waits for one database (libpq's connect_timeout floor is 2 s)


def need_psycopg() -> str:
    return f"cluster jobs need psycopg 3: {paths.psycopg_hint()}"


def check_options(given: Optional[str], lease: Optional[float], standby: bool, rotate: bool, sync: bool,
                  environ: dict[str, str]) -> tuple[str, float]:
    """The job's cluster URL ("" for none) and lease, or a UserError (exit 2, one line) naming
    the option that cannot be: job.clusteropts.check_cluster (what job building checks), then
    whether psycopg can be imported here. `given` None: $WATCHDOG_SINGLETON_CLUSTER of `environ`."""
    url, seconds = check_cluster(given, lease, standby, rotate, sync, environ)
    problem = driver_problem(url) if url else ""
    if problem:
        raise UserError(problem, field="cluster")
    return url, seconds


def driver_problem(url: str = "") -> str:
    """Why this interpreter cannot talk to the cluster database at `url` (no psycopg, or a URL
    libpq cannot parse); "" when it can."""
    try:
        import psycopg  # noqa: F401  (the launcher imports it lazily; here we only ask whether it can)
    except ImportError:
        return need_psycopg()
    from ..cluster.postgres import url_problem

    return url_problem(url) if url else ""


_CRON_DRIVER: dict[tuple[str, str], str] = {}


def check_cron_driver(python: str, flag: str) -> None:
    """UserError unless cron's interpreter finds psycopg (asked once per process)."""
    key = (python, flag)
    if key not in _CRON_DRIVER:
        _CRON_DRIVER[key] = cron_driver_problem(python, flag)
    if _CRON_DRIVER[key]:
        raise UserError(_CRON_DRIVER[key])


def cron_driver_problem(python: str, flag: str) -> str:
    """Whether the interpreter cron runs (`python flag -m watchdog_singleton`, from /, in cron's
    bare environment) finds psycopg too: -I leaves out the user's site-packages and PYTHONPATH,
    where `pip install --user psycopg` would have put it. "" when it does."""
    probe = [python, *([flag] if flag else []), "-c", "import psycopg"]
    env = {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/"), "LANG": "C.UTF-8"}
    try:
        proc = subprocess.run(probe, cwd="/", env=env, stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot check that cron's {python} finds psycopg: {exc}"
    if proc.returncode == 0:
        return ""
    return (f"{need_psycopg()} (cron runs {python}{' ' + flag if flag else ''}, which does not find it: "
            "install it beside watchdog-singleton, not with pip --user)")


def grace_note(name: str, lease: float, grace: float) -> str:
    """A warning when a lease holder's --grace will be cut to fit the lease (Timing.capped_grace)."""
    timing = Timing.for_lease(lease)
    capped = timing.capped_grace(grace)
    if capped >= grace:
        return ""
    return (f"warning: while {name} holds its lease, --grace {grace:g} s is cut to {capped:g} s: a lease of "
            f"{lease:g} s leaves {timing.stop_budget():g} s to stop the tree before another host may take over")


class ClusterView:
    """NAME's lease as each cluster database sees it, for one `status` call: one connection per
    database, one short query per job; a database that cannot be reached is asked only once and
    every job on it gets the same one-line problem."""

    def __init__(self, attempt: float = STATUS_ATTEMPT) -> None:
        self.timing = Timing(lease=60.0, renew_deadline=40.0, retry=10.0, attempt=attempt)
        self.engines: dict[str, Any] = {}
        self.problems: dict[str, str] = {}

    def read(self, name: str, url: str, fresh: float) -> tuple[Optional[dict[str, Any]], str]:
        """(what the database says of NAME, or None if it never heard of it; "" or the problem)."""
        if url in self.problems:
            return None, self.problems[url]
        try:
            engine = self.engines.get(url)
            if engine is None:
                engine = self.engines[url] = open_cluster(url, self.timing, holder="status")
            overview = getattr(engine, "overview", None)
            if overview is None:  # an engine without one query for all of it: its plain status
                info = engine.status(name)
                return (info.to_dict() if info is not None else None), ""
            found: Optional[dict[str, Any]] = overview(name, fresh)
            return found, ""
        except (LeaseError, UserError) as exc:  # unreachable, no psycopg, a newer schema: the same for every job
            self.problems[url] = str(exc)
            return None, self.problems[url]

    def close(self) -> None:
        for engine in self.engines.values():
            engine.close()
        self.engines.clear()


def supervisor_trouble(state: Any) -> str:
    """"gone" or "stopped" when this host's record says holder but its supervisor cannot renew
    (its watcher then ends the tree before the lease can pass); "" otherwise, also for a
    supervisor that ended on purpose (`stop`, the daemon done): it released the lease."""
    if state is None or state.lease_role != "holder":
        return ""
    return str(state.supervisor_trouble())


def describe(job_cluster_url: str, lease: float, standby: bool, rotate: bool, sync: bool, state: Any,
             view: Optional[ClusterView], name: str, tick: float = CRON_TICK) -> dict[str, Any]:
    """status's `cluster` field: the job's settings, this host's part (its run state) and what the
    database says (or the one line saying why it could not be asked)."""
    info: dict[str, Any] = {
        "url": redact(job_cluster_url), "lease_seconds": lease, "standby": standby, "rotate": rotate, "sync": sync,
        "role": state.lease_role if state is not None else "",
        "token": state.lease_token if state is not None else None,
        "holder_seen": state.lease_holder if state is not None else "",
        "problem": state.lease_problem if state is not None else "",
        "checked_at": state.lease_checked_at if state is not None else None,
        "supervisor": supervisor_trouble(state),
        "database": None, "database_problem": "",
    }
    if view is not None:
        info["database"], info["database_problem"] = view.read(name, job_cluster_url, fresh_window(lease, tick))
    return info


def holder_host(holder: Optional[str]) -> str:
    """A holder as people name it: its host (the id is host:boot_id:pid:start)."""
    return str(holder or "?").split(":")[0]


def held_words(db: dict[str, Any]) -> str:
    """Who holds the lease and until when, in the same words for `status` and `lease status`."""
    host = holder_host(db.get("holder"))
    until = str(db.get("expires_at") or "")[11:19]
    if db.get("live"):
        return f"held by {host}, token {db['token']}, until {until} ({db['seconds_left']:.0f} s left)"
    return f"free (last holder {host}, token {db['token']}, expired {until})"


def summary(cluster: dict[str, Any]) -> str:
    """The one line `status` prints under a cluster job's row."""
    me = cluster["role"] or "not yet asked"
    if cluster["role"] == "holder" and cluster["token"] is not None:
        me = f"holder, token {cluster['token']}"
    elif cluster["role"] == "standby" and cluster["holder_seen"]:
        me = f"standby (held by {holder_host(cluster['holder_seen'])})"
    if cluster.get("supervisor"):  # a holder whose supervisor cannot renew: gone, or stopped
        me = f"supervisor {cluster['supervisor']} (was {me})"
    parts = [f"this host {me}"]
    if cluster["problem"]:
        parts.append(f"last problem: {cluster['problem']}")
    if cluster["database_problem"]:
        problem = cluster["database_problem"].replace(f" {cluster['url']}", "")  # said once, in front
        return f"cluster {cluster['url']}: {problem}; " + "; ".join(parts)
    db = cluster["database"]
    if db is None:
        parts.insert(0, "no host has held it yet")
    else:
        if db.get("token") is not None:
            parts.insert(0, held_words(db))
        last = db.get("last_start") or db.get("acquired_at")
        if last:
            parts.append(f"last start {str(last)[:19].replace('T', ' ')}")
        if db.get("hosts") is not None:
            parts.append(f"hosts seen {', '.join(db['hosts']) or 'none'}")
        if cluster["rotate"]:
            parts.append(f"turn {db.get('turn') or 'none'}")
    return f"cluster {cluster['url']}: " + "; ".join(parts)
