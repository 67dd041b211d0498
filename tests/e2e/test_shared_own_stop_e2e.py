"""Shared mode end to end: a job's own stop (here its --max-lifetime, of a daemon that ignores
SIGTERM) waits out its grace beside the shared resident's loop, so another shared job's daemon
killed meanwhile is restarted at once, not when that grace is over."""

from __future__ import annotations

import os
import signal
import time

from conftest import Sandbox, is_zombie, pids_with_arg, wait_for

NEVER = "0 0 1 1 *"  # cron does not fire it during a test: starts come from install
LIFETIME, GRACE = 10, 15


def test_a_lifetime_stop_in_its_grace_does_not_hold_back_another_shared_jobs_restart(sandbox: Sandbox) -> None:
    aging, other = sandbox.job("aging"), sandbox.job("other")
    deaf = f"deaf-{aging}"
    sandbox.ok("install", aging, "--shared", "--schedule", NEVER, "--max-lifetime", str(LIFETIME),
               "--grace", str(GRACE), "--", "/usr/bin/python3", "-c",
               "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(10**6)", deaf)
    marker = f"marker-{other}"
    sandbox.ok("install", other, "--shared", "--schedule", NEVER, "--", "/usr/bin/python3", "-c",
               "import time; time.sleep(10**6)", marker)
    [old] = pids_with_arg(deaf, sandbox.user.uid)
    wait_for(lambda: sandbox.status(aging)["phase"] == "stopping", LIFETIME + 10, interval=0.1,
             what="the lifetime's stop to begin")
    [victim] = pids_with_arg(marker, sandbox.user.uid)
    killed = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: pids_with_arg(marker, sandbox.user.uid) not in ([], [victim]), GRACE, interval=0.02,
             what="the other job's new copy")
    took = time.monotonic() - killed
    assert took < 3.0, f"the other job's restart took {took:.1f} s: it waited for the lifetime's grace"
    assert os.path.exists(f"/proc/{old}"), "the deaf daemon is gone already: its grace did not run"
    wait_for(lambda: pids_with_arg(deaf, sandbox.user.uid) not in ([], [old]), GRACE + 10, interval=0.1,
             what="the aging job's new copy after SIGKILL")
    assert not os.path.exists(f"/proc/{old}") or is_zombie(old)
