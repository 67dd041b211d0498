"""What `install` is asked: one field per option of options.py that install takes, plus the job's
name and command. The command line, a TOML file's [jobs.NAME] table (config.ConfigFile.request)
and an imported crontab line (commands/importer.py) each make one; commands/install.build_job
checks it and makes the Job.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from .options import OPTIONS


def _d(name: str) -> Any:
    return OPTIONS[name].default


@dataclass
class InstallRequest:
    """What install is asked: one field per option of options.py that install takes (its default
    the schema's; tests/contract/test_options.py holds the two together), plus the job's name and command."""

    name: str
    command: list[str]
    schedule: str = _d("schedule")
    start: bool = True
    log_dir: Optional[str] = None
    workdir: Optional[str] = None
    env: list[str] = field(default_factory=list)
    grace: float = _d("grace")
    lock_dir: Optional[str] = None
    allow_network_fs: bool = _d("allow_network_fs")
    restart: str = _d("restart")
    backoff_initial: float = _d("backoff_initial")
    backoff_max: float = _d("backoff_max")
    min_uptime: float = _d("min_uptime")
    log_max_bytes: int = _d("log_max_bytes")
    log_backups: int = _d("log_backups")
    lean: bool = _d("lean")
    shared: bool = _d("shared")
    forking: bool = _d("forking")
    settle: float = _d("settle")
    periodic: bool = _d("periodic")
    every: float = _d("every")
    timeout: float = _d("timeout")
    jitter: float = _d("jitter")
    catch_up: str = _d("catch_up")
    loop: bool = _d("loop")
    max_lifetime: float = _d("max_lifetime")
    sync: bool = _d("sync")
    cluster: Optional[str] = None  # postgresql://USER@HOST/DB; None: $WATCHDOG_SINGLETON_CLUSTER; "none": this host
    lease: Optional[float] = None  # None: the default (60 s); given without a cluster, refused
    standby: bool = _d("standby")
    rotate: bool = _d("rotate")
    applied_from: str = ""
    stdout_log: Optional[str] = None  # an explicit log file instead of LOG_DIR/NAME.stdout.log
    stderr_log: Optional[str] = None  # the same file as stdout_log is fine: both streams go there
    on_failure: Any = None  # a command line (split as a shell would) or an argv list ([]: none); None: none
    mail: str = _d("mail")  # failure mail to this address (cron's MAILTO); "": none
    notify_every: float = _d("notify_every")
