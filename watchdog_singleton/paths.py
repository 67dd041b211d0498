"""Every default location, in one place.

Locks live on local /tmp on purpose: flock(2) on NFS or Lustre is not a per-host lock one can
trust. Everything else lives under $XDG_STATE_HOME, in a folder named after the host, because
home folders are often shared by nodes that each have their own crontab.
"""

from __future__ import annotations

import os

LOCK_DIR_ENV = "WATCHDOG_SINGLETON_LOCK_DIR"
STATE_DIR_ENV = "WATCHDOG_SINGLETON_STATE_DIR"


def host() -> str:
    return os.uname().nodename


def default_lock_dir() -> str:
    # Literal /tmp, not $TMPDIR: HPC sites often point TMPDIR at shared scratch.
    return os.environ.get(LOCK_DIR_ENV) or f"/tmp/watchdog-singleton-{os.getuid()}"


def state_dir() -> str:
    """The per-host folder that holds job definitions, run state and default logs."""
    explicit = os.environ.get(STATE_DIR_ENV)
    if explicit:
        return os.path.abspath(explicit)
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(os.path.abspath(base), "watchdog-singleton", host())


def jobs_dir(root: str) -> str:
    return os.path.join(root, "jobs")


def run_dir(root: str) -> str:
    return os.path.join(root, "run")


def default_log_dir(root: str) -> str:
    return os.path.join(root, "logs")


def log_files(log_dir: str, name: str) -> tuple[str, str]:
    return os.path.join(log_dir, f"{name}.stdout.log"), os.path.join(log_dir, f"{name}.stderr.log")


def lock_file(lock_dir: str, name: str) -> str:
    return os.path.join(lock_dir, f"{name}.lock")


def crontab_edit_lock(lock_dir: str) -> str:
    return os.path.join(lock_dir, "crontab.edit-lock")
