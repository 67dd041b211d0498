"""Which engine serves a cluster URL: the one place that knows every engine module.

Kept out of the package's __init__ (the interface every engine imports), so that no engine and
the interface import each other. Nothing here imports a driver until a URL asks for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from ..errors import USAGE, UserError
from . import Timing, redact

if TYPE_CHECKING:
    from . import ClusterLease, SharedLink


def open_cluster(url: str, timing: Optional[Timing] = None, holder: Optional[str] = None,
                 host: Optional[str] = None) -> "ClusterLease":
    """The engine for `url`'s scheme. Connects lazily: the first call may raise LeaseUnavailable."""
    if is_postgres_url(url):
        from .postgres import PostgresLease

        return PostgresLease(url, timing or Timing(), holder=holder, host=host)
    raise _unknown(url)


def open_link(url: str, timing: Timing, host: Optional[str] = None) -> "SharedLink":
    """One connection to `url` for the engines of many jobs (the cluster house): `lease_for`
    gives each job's engine, `renew_all` renews all their grants in one round trip."""
    if is_postgres_url(url):
        from .postgres import PostgresLink

        return PostgresLink(url, timing.attempt, host=host)
    raise _unknown(url)


def is_postgres_url(url: str) -> bool:
    """Whether `url` names a PostgreSQL database (the scheme, in any case)."""
    return "://" in url and url.split("://", 1)[0].lower() in ("postgresql", "postgres")


def _unknown(url: str) -> UserError:
    return UserError(f"cluster {redact(url)!r}: unknown kind; use postgresql://USER@HOST/DB "
                     "(the password goes in ~/.pgpass)", USAGE)
