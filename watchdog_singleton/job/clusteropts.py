"""A job's cluster options, checked by their shape and never by connecting: the URL (a known
scheme, no password in it), the lease's range, and the options only a cluster job can have.

    url, lease = check_cluster(given, lease, standby, rotate, sync, environ)   # ("", 60.0): none

Part of job building (build.py), so standard library only: the tick checks an ad-hoc run's
--cluster with it. Whether this interpreter has a driver for the database is the caller's
question (commands/cluster.py asks it for install, apply and submit).
"""

from __future__ import annotations

from ..envvars import CLUSTER_ENV
from ..errors import USAGE, UserError
from .model import check_limit
from .options import BY_FLAG, OPTIONS, about

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing stays out of the tick's memory; annotations are strings
    from typing import Optional

NO_CLUSTER = "none"  # --cluster none: this host only, whatever $WATCHDOG_SINGLETON_CLUSTER says


def redact(url: str) -> str:
    """The URL without a password (in its user part or a password= parameter), should one have
    been put in it against our advice."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    if "@" in rest.split("/", 1)[0]:
        auth, _, hostpart = rest.partition("@")
        rest = f"{auth.split(':', 1)[0]}@{hostpart}"
    base, question, query = rest.partition("?")
    if question:
        kept = [part for part in query.split("&") if not part.lower().startswith("password=")]
        rest = base + ("?" + "&".join(kept) if kept else "")
    return f"{scheme}://{rest}"


def job_cluster(given: Optional[str], environ: Optional[dict[str, str]] = None) -> str:
    """A job's cluster from --cluster (or `cluster =`), else $WATCHDOG_SINGLETON_CLUSTER of
    `environ` (default: ours); "" for none. Checked without connecting: a known scheme, and no
    password in it (it would land in the crontab and our files in clear)."""
    if given is None:
        import os

        given = (os.environ if environ is None else environ).get(CLUSTER_ENV, "")
    url = given.strip()
    if url in ("", NO_CLUSTER):
        return ""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in ("postgresql", "postgres"):
        raise UserError(f"cluster {redact(url)!r}: unknown kind; use postgresql://USER@HOST/DB", USAGE)
    auth = rest.split("/", 1)[0].rpartition("@")[0]
    if ":" in auth or "password=" in url.lower():
        raise UserError(f"cluster {redact(url)!r}: a password in the URL would be written in clear to the "
                        "crontab and our files; put it in ~/.pgpass (or PGPASSFILE, or a pg_service.conf)", USAGE)
    if any(c.isspace() or ord(c) < 32 for c in url):
        raise UserError(f"cluster {redact(url)!r}: a URL cannot hold spaces or control characters", USAGE)
    return url


def refuse_without_cluster(options: dict[str, bool]) -> None:
    """A UserError (exit 2) naming the first option given ({"--standby": True, ...}) that only a
    cluster job can have; called when the job has no cluster. Its field is that option's."""
    for option, given in options.items():
        if given:
            opt = BY_FLAG.get(option)
            raise UserError(f"{option} is for cluster jobs: add --cluster postgresql://USER@HOST/DB "
                            f"(or set {CLUSTER_ENV})", USAGE, field=opt.name if opt is not None else "")


def check_cluster(given: Optional[str], lease: Optional[float], standby: bool, rotate: bool, sync: bool,
                  environ: dict[str, str]) -> tuple[str, float]:
    """The job's cluster URL ("" for none) and lease, or a UserError (exit 2, one line) naming
    the option that cannot be. `given` None: $WATCHDOG_SINGLETON_CLUSTER of `environ`; `lease`
    None: not given (the default; given without a cluster, refused)."""
    with about("cluster"):
        url = job_cluster(given, environ)
    if lease is not None:
        check_limit("--lease", lease)
    if not url:
        refuse_without_cluster({"--lease": lease is not None, "--standby": standby, "--rotate": rotate,
                                "--sync": sync})
        return "", OPTIONS["lease"].default
    return url, OPTIONS["lease"].default if lease is None else float(lease)
