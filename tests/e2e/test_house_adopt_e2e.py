"""After a kill -9 of the shared resident with no anchor above it (killed first), the crontab line
of one shared job starts a new resident that adopts every daemon the dead one left running
(supervisor/adopt.py), as the test user with real processes: supervision is back for all of them,
and one adopted daemon's death is acted on at once, by that new resident, without touching the other."""

from __future__ import annotations

import os
import signal

from conftest import Sandbox, holds_for, is_zombie, pids_with_arg, wait_for
from sharedkit import kill_anchor, residents

NEVER = "0 0 1 1 *"  # cron does not fire it during the test: the ticks below are fired by hand






def test_a_tick_after_kill_9_of_the_shared_resident_adopts_every_daemon(sandbox: Sandbox) -> None:
    jobs = {}
    for base in ("left", "right"):
        name = sandbox.job(base)
        marker = f"marker-{name}"
        sandbox.ok("install", name, "--shared", "--schedule", NEVER, "--grace", "2", "--",
                   "/usr/bin/python3", "-c", "import time; time.sleep(10**6)", marker)
        jobs[name] = marker
    before = {name: pids_with_arg(marker, sandbox.user.uid) for name, marker in jobs.items()}
    assert all(len(pids) == 1 for pids in before.values()), before
    [house] = residents(sandbox)
    kill_anchor(house)  # with it, a new resident takes over at once (test_house_anchor_e2e.py)
    os.kill(house, signal.SIGKILL)
    wait_for(lambda: not os.path.exists(f"/proc/{house}") or is_zombie(house), 10, what="the resident to die")
    (first, _), (second, second_marker) = jobs.items()

    sandbox.fire_tick(first)  # its lock is held by its daemon: the line finds the resident dead
    [adopter] = wait_for(lambda: residents(sandbox), 20, what="a new resident")
    assert adopter != house
    for name, marker in jobs.items():
        info = sandbox.status(name)
        assert info["running"] and info["supervisor_pid"] == adopter, info
        assert info["pid"] == before[name][0] and info["supervisor"] == "", info
        assert pids_with_arg(marker, sandbox.user.uid) == before[name], name

    # While the new resident lives, a held lock's tick leaves in the shell: no second resident.
    sandbox.fire_tick(second)
    assert residents(sandbox) == [adopter]

    # An adopted daemon's death is seen at once (no tick fired) and restarted by the new resident.
    os.kill(before[first][0], signal.SIGKILL)
    wait_for(lambda: pids_with_arg(jobs[first], sandbox.user.uid) not in ([], before[first]), 10,
             interval=0.02, what="the adopted daemon restarted by the new resident")
    assert holds_for(lambda: len(pids_with_arg(jobs[first], sandbox.user.uid)) == 1, 1.0)
    info = sandbox.status(first)
    assert info["supervisor_pid"] == adopter and info["last_exit_unknown"] and info["last_exit_code"] is None
    assert pids_with_arg(second_marker, sandbox.user.uid) == before[second]
    assert residents(sandbox) == [adopter]
    # And a stop of the other adopted job goes through the new resident, which stops its tree only.
    assert "stopped" in sandbox.ok("stop", second).stdout
    assert pids_with_arg(second_marker, sandbox.user.uid) == []
    assert len(pids_with_arg(jobs[first], sandbox.user.uid)) == 1
    assert residents(sandbox) == [adopter]
