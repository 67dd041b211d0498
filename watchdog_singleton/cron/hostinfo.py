"""Facts about this host that decide whether crontab entries will fire."""

from __future__ import annotations

import os
from typing import Optional

CRON_PIDFILES = ("/run/crond.pid", "/var/run/crond.pid", "/run/cron.pid", "/var/run/cron.pid")
CRON_NAMES = {"cron", "crond", "cronie", "busybox-crond"}


def cron_daemon_running() -> Optional[bool]:
    """True if a cron daemon runs, False if none does, None if /proc hides other users' processes."""
    for pidfile in CRON_PIDFILES:
        try:
            with open(pidfile) as f:
                pid = int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            continue
        if os.path.exists(f"/proc/{pid}"):
            return True
    seen_other_user = False
    uid = os.getuid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.stat(f"/proc/{entry}").st_uid != uid:
                seen_other_user = True
            with open(f"/proc/{entry}/comm") as f:
                if f.read().strip() in CRON_NAMES:
                    return True
        except OSError:
            continue
    return False if seen_other_user or uid == 0 else None
