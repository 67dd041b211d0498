"""Every default location, in one place.

Locks live on local /tmp on purpose: flock(2) on NFS or Lustre is not a per-host lock one can
trust. Everything else lives under $XDG_STATE_HOME, in a folder named after the host, because
home folders are often shared by nodes that each have their own crontab. The default lock
folder itself is chosen (and made) by lock.default_lock_dir; its record is named here.
"""

from __future__ import annotations

import os

from .envvars import HOME_ENV, JOB_ENV, STATE_DIR_ENV


def host() -> str:
    return os.uname().nodename


def lock_dir_record(root: str) -> str:
    """Which folder under /tmp is this user's default lock folder on this host."""
    return os.path.join(root, "lock-dir")


# The folder that holds this package: what a fresh `python -I -S` (the resident, the watcher, the
# notifier) puts on sys.path to import it, since -S skips the site-packages it lives in.
PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def state_dir() -> str:
    """The per-host folder that holds job definitions, run state and default logs."""
    explicit = os.environ.get(HOME_ENV) or (os.environ.get(STATE_DIR_ENV) if JOB_ENV not in os.environ else None)
    if explicit:
        return os.path.abspath(explicit)
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(os.path.abspath(base), "watchdog-singleton", host())


def job_state_dir(root: str, name: str) -> str:
    """NAME's own folder for checkpoints (WATCHDOG_SINGLETON_STATE_DIR): keyed by the job's name,
    not by the host, so a job that moves (a batch job, another node sharing the home) finds it."""
    return os.path.join(os.path.dirname(os.path.abspath(root)), "job-state", name)


def batch_dir(root: str, name: str) -> str:
    """Where `submit` keeps NAME's batch script, its submission record and the chain's stop marker."""
    return os.path.join(job_state_dir(root, name), ".batch")


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


def crontab_edit_lock(root: str) -> str:
    # In the per-host state folder, not under /tmp: it is always the user's own, so a folder
    # another user planted in /tmp cannot block crontab edits even with --lock-dir.
    return os.path.join(root, "crontab.edit-lock")


def isolation_flag() -> str:
    """The interpreter flag that keeps the current directory (and, when it is safe, the user's
    site-packages and PYTHON* variables) out of our own `python -m watchdog_singleton` runs.

    -I drops user site-packages and PYTHONPATH, so it is used only when this package is importable
    without them (a venv, pipx, the system site-packages); otherwise -P (3.11+), else nothing and
    the caller's `cd /` alone keeps a stray ~/json.py out.
    """
    import site
    import sys

    package_parent = os.path.realpath(PACKAGE_PARENT)
    dropped = {os.path.realpath(p) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p}
    user_site = os.path.realpath(site.getusersitepackages())
    kept = set()
    for entry in sys.path[1:]:  # sys.path[0] is the script's folder or the cwd: -I drops it
        real = os.path.realpath(entry or ".")
        if real not in dropped and not (real + os.sep).startswith(user_site + os.sep):
            kept.add(real)
    if package_parent in kept:
        return "-I"
    return "-P" if sys.version_info >= (3, 11) else ""


def psycopg_hint() -> str:
    """How to add psycopg to the environment this package runs from: pipx keeps its own venv
    (marked by pipx_metadata.json), where a `pip install` of the user's would not land. Otherwise
    this interpreter's own pip: the package is installed from a checkout, not from PyPI, so
    `pip install 'watchdog-singleton[postgres]'` would fetch nothing, or someone else's."""
    import shlex
    import sys

    if os.path.isfile(os.path.join(sys.prefix, "pipx_metadata.json")):
        return f"pipx inject {os.path.basename(sys.prefix)} 'psycopg[binary]'"
    return f"{shlex.quote(sys.executable or 'python3')} -m pip install 'psycopg[binary]'"
