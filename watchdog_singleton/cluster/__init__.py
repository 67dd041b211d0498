"""One copy across several hosts: a lease with a fencing token, behind one small interface.

    cluster = engines.open_cluster("postgresql://me@db.example.org/ws")    # the password: ~/.pgpass
    grant = cluster.acquire("ingest")           # None: another host holds it
    if grant is not None:
        os.environ["WATCHDOG_SINGLETON_FENCING_TOKEN"] = str(grant.token)
        ...                                     # renew every Timing.retry seconds (see keeper)
        cluster.release(grant)

The flock (lock.py) keeps one copy per host; a cluster lease, taken after it, keeps one copy
across hosts. The database times the lease (its own clock, never ours); the holder times its
give-up deadline on its local CLOCK_BOOTTIME (keeper.py). A grant's token strictly increases
across every grant of that name, forever, so whatever the daemon writes can be fenced with it
(Kleppmann: a lease alone never guarantees one holder; a stale holder must be refused by the
resource it writes to). PostgreSQL is the first engine (postgres.py); another (etcd, Redis)
implements `ClusterLease` and gets a scheme in `engines.open_cluster`.

Nothing here imports a driver: the launcher pays for psycopg only when a job has a cluster.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

from ..envvars import CLUSTER_ENV
from ..errors import FAILED, UNAVAILABLE, USAGE, UserError
from ..job.clusteropts import NO_CLUSTER as NO_CLUSTER  # a job's cluster options: checked with the job
from ..job.clusteropts import job_cluster as job_cluster
from ..job.clusteropts import redact as redact
from ..job.clusteropts import refuse_without_cluster as refuse_without_cluster
from ..job.options import OPTIONS

if TYPE_CHECKING:
    from typing import Protocol

    class ClusterLease(Protocol):
        """What a cross-host lease engine offers. Every call is one round trip, or raises
        LeaseUnavailable; none of them waits for a lease."""

        holder: str
        host: str
        seen_holder: str  # after an acquire that got nothing: the host holding NAME, if known

        def acquire(self, name: str) -> Optional[Grant]:
            """Take NAME if it is free or expired (on the engine's clock); None if held."""

        def renew(self, grant: Grant) -> Optional[Grant]:
            """Extend our grant by the lease duration; None once it is lost (expired or taken)."""

        def release(self, grant: Grant) -> bool:
            """Expire our grant now (the token stays spent); False if it was no longer ours."""

        def check(self, name: str, token: int) -> bool:
            """Whether `token` is NAME's current, unexpired grant."""

        def status(self, name: str) -> Optional[LeaseInfo]:
            """NAME's row as the engine sees it now; None if NAME was never granted nor synced."""

        def claim_slot(self, name: str, period: float) -> Optional[int]:
            """A periodic job's run slot: at most one per `period` seconds counted from the last
            start on any host. Its count (strictly increasing), or None while the period runs."""

        def heartbeat(self, name: str) -> None:
            """Record that this host is live for NAME (acquire and renew do it too)."""

        def whose_turn(self, name: str, fresh: float) -> Optional[str]:
            """Rotation: the live host (heartbeat within `fresh` s) whose turn it is."""

        def pass_turn(self, name: str, fresh: float) -> str:
            """Rotation, after a run here: the turn goes to the next live host in name order."""

        def overview(self, name: str, fresh: float) -> Optional[dict[str, object]]:
            """Everything `status` shows of NAME in one round trip (holder, token, expiry, last
            start, hosts seen within `fresh` s, whose turn); None if NAME was never seen."""

        def close(self) -> None: ...

    class SharedLink(Protocol):
        """One connection to a database for the engines of many jobs (the cluster house)."""

        def lease_for(self, timing: Timing) -> ClusterLease:
            """A job's engine whose round trips go over this connection (its close leaves it open)."""

        def renew_all(self, asks: list[tuple[Grant, float]], attempt: float) -> dict[str, Grant]:
            """Renew each grant (with its lease's seconds) in one round trip; the grants that came
            back, by name (one missing is lost). Raises LeaseUnavailable: nothing is known."""

        def drop(self) -> None:
            """Close the connection; the next round trip opens another."""


MAX_TOKEN = 2**63 - 1  # a bigint
DEFAULT_LEASE: float = OPTIONS["lease"].default  # Timing.for_lease renews every sixth of it
KILL_LANDS = 1.0  # seconds allowed, after SIGKILL, for the kernel to end a tree


class LeaseError(Exception):
    """A cluster problem fit to print on one line; `exit_code` for the CLI."""

    def __init__(self, message: str, exit_code: int = FAILED) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class LeaseUnavailable(LeaseError):
    """The engine cannot be reached or refused to answer: nothing is known, nothing was changed
    by us (a holder keeps its deadline; a candidate stays a candidate)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, UNAVAILABLE)


@dataclass(frozen=True)
class Timing:
    """client-go's leader-election rule: lease > renew_deadline > 1.2 x retry.

    lease: how long a grant lives on the engine's clock without a renew; what a standby waits
      at most after the holder vanished.
    renew_deadline: the holder stops its tree when it has not renewed for this long (on its
      own clock, from the moment it sent the last renew that succeeded).
    retry: how often the holder renews (and retries a failed renew).
    attempt: the longest one round trip may take (connect, statement, unacknowledged TCP data);
      at most `retry`.
    head: the shared resident's head start (0 for a supervisor of its own): its watcher begins
      this long after the give-up deadline, so that the resident, which gives up at the
      deadline, has told it first that it stops that job's tree itself (supervisor/housecluster.py);
      taken out of the capped grace.
    """

    lease: float = 60.0
    renew_deadline: float = 40.0
    retry: float = 10.0
    attempt: float = 5.0
    head: float = 0.0

    def __post_init__(self) -> None:
        for field in ("lease", "renew_deadline", "retry", "attempt"):
            value = getattr(self, field)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise UserError(f"lease timing {field} must be a positive number of seconds, not {value!r}", USAGE)
        if not self.lease > self.renew_deadline > 1.2 * self.retry:
            raise UserError(f"lease timing must keep lease > renew deadline > 1.2 x retry "
                            f"(got {self.lease:g} > {self.renew_deadline:g} > 1.2 x {self.retry:g})", USAGE)
        if self.attempt > self.retry:
            raise UserError(f"lease timing attempt {self.attempt:g} s is longer than retry {self.retry:g} s", USAGE)
        if self.lease > 86400:
            raise UserError(f"lease timing lease {self.lease:g} s is over a day", USAGE)

    @classmethod
    def for_lease(cls, lease: float) -> "Timing":
        """The timing a job's --lease implies: renew every sixth of it, give up at two thirds (60 s:
        renew every 10 s, give up after 40 s without a renew, one round trip at most 5 s)."""
        return cls(lease=lease, renew_deadline=lease * 2 / 3, retry=lease / 6, attempt=min(5.0, lease / 12))

    def capped_grace(self, grace: float) -> float:
        """--grace as a lease holder may use it: SIGTERM, the grace, SIGKILL and a second for the
        kernel to end the processes must all fit in the stop budget."""
        return max(0.0, min(grace, self.stop_budget() - KILL_LANDS - self.head))

    def stop_budget(self) -> float:
        """Seconds between the holder's give-up and the earliest moment another host can hold
        the lease: stopping the tree (grace plus the SIGKILL wait) must fit in here."""
        return self.lease - self.renew_deadline - self.attempt


@dataclass(frozen=True)
class Grant:
    """A lease we hold; `token` is its fencing token."""

    name: str
    holder: str
    token: int
    expires_at: str  # the engine's clock, ISO 8601, for people


@dataclass(frozen=True)
class LeaseInfo:
    name: str
    holder: Optional[str]
    token: Optional[int]
    expires_at: Optional[str]
    live: bool  # the grant has not expired on the engine's clock
    seconds_left: float  # until it expires (0 when it has)
    last_start: Optional[str]  # a sync job's last start on any host
    slot: Optional[int]  # a sync job's run count
    now: str  # the engine's clock at the moment of the query

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "holder": self.holder, "token": self.token, "expires_at": self.expires_at,
                "live": self.live, "seconds_left": round(self.seconds_left, 3), "last_start": self.last_start,
                "slot": self.slot, "now": self.now}


CRON_TICK = 60.0  # how often a cron-driven host asks (its heartbeat) when nothing runs there


def fresh_window(lease: float, tick: float = CRON_TICK) -> float:
    """How recently a host must have been seen to count as live (rotation, `status`): three of its
    ticks, or the lease when that is longer."""
    return max(3 * tick, lease)


def holder_id(pid: Optional[int] = None) -> str:
    """host:boot_id:pid:start: unique across hosts, reboots and PID reuse."""
    from ..proc import procs

    pid = pid or os.getpid()
    return f"{os.uname().nodename}:{procs.boot_id()}:{pid}:{procs.start_time(pid)}"


def cluster_url(given: Optional[str]) -> str:
    """--cluster, else WATCHDOG_SINGLETON_CLUSTER; UserError when neither says."""
    url = given or os.environ.get(CLUSTER_ENV, "")
    if not url:
        raise UserError(f"no cluster database: pass --cluster postgresql://... or set {CLUSTER_ENV}", USAGE)
    return url


