"""A shared job's stop, restart or uninstall while its live resident does not answer, as the test
user with real processes. The resident is never worked around (stopping the job's tree around it,
the resident would start the job again at once) and nothing of ours above the jobs is ever signalled
(the anchor holds a copy of every job's lock, and passes SIGTERM on to the resident: every job would
stop). A deleted socket is put back at once (SIGHUP) and the command goes on; a resident that
cannot answer makes the command fail with one line, nothing changed."""

from __future__ import annotations

import os
import shutil
import signal

from conftest import Sandbox, holds_for, is_zombie, pids_with_arg, wait_for
from userkit import read_bytes

NEVER = "0 0 1 1 *"  # cron does not fire it during a test: starts come from install and start


def install_shared(box: Sandbox, base: str) -> tuple[str, str]:
    name = box.job(base)
    marker = f"marker-{name}"
    box.ok("install", name, "--shared", "--schedule", NEVER, "--grace", "2", "--",
           "/usr/bin/python3", "-c", "import time; time.sleep(10**6)", marker)
    return name, marker


def alive(pid: int) -> bool:
    return os.path.exists(f"/proc/{pid}") and not is_zombie(pid)


def resident_and_anchor(box: Sandbox) -> tuple[int, int]:
    [house] = [pid for pid in pids_with_arg("--state-dir", box.user.uid)
               if b"housemain" in read_bytes(f"/proc/{pid}/cmdline") and box.dir.encode() in
               read_bytes(f"/proc/{pid}/cmdline")]
    stat = read_bytes(f"/proc/{house}/stat")
    anchor = int(stat[stat.rindex(b")") + 2:].split()[1])
    assert b"supervisor.anchor" in read_bytes(f"/proc/{anchor}/cmdline")
    return house, anchor


def test_a_stop_while_the_resident_is_stopped_changes_nothing_and_signals_none_of_ours(sandbox: Sandbox) -> None:
    (b2, b2_marker), (k1, k1_marker) = install_shared(sandbox, "b2"), install_shared(sandbox, "k1")
    daemons = {name: pids_with_arg(marker, sandbox.user.uid) for name, marker in ((b2, b2_marker), (k1, k1_marker))}
    assert all(len(pids) == 1 for pids in daemons.values()), daemons
    house, anchor = resident_and_anchor(sandbox)
    crontab = sandbox.crontab()
    os.kill(house, signal.SIGSTOP)
    try:
        for command in (("stop", k1), ("restart", k1), ("uninstall", k1)):
            proc = sandbox.ws(*command)
            assert proc.returncode == 1, (command, proc.stdout, proc.stderr)
            [line] = proc.stderr.strip().splitlines()
            assert f"shared resident pid {house}" in line and "is stopped" in line and "nothing changed" in line
            assert f"kill -CONT {house}" in line, line
            assert proc.stdout == ""
    finally:
        os.kill(house, signal.SIGCONT)
    # Nothing changed: both daemons, the resident and its anchor as they were; k1 still installed.
    assert holds_for(lambda: alive(house) and alive(anchor) and all(
        pids_with_arg(m, sandbox.user.uid) == daemons[n] for n, m in ((b2, b2_marker), (k1, k1_marker))), 2.0)
    assert sandbox.crontab() == crontab
    info = sandbox.status(k1)
    assert info["running"] and info["enabled"] and info["supervisor_pid"] == house, info
    # Now it answers: k1 stops for good, b2 and ours untouched.
    assert sandbox.ok("stop", k1).stdout.strip() == f"stopped {k1}"
    assert pids_with_arg(k1_marker, sandbox.user.uid) == []
    assert holds_for(lambda: pids_with_arg(b2_marker, sandbox.user.uid) == daemons[b2] and alive(house)
                     and alive(anchor) and pids_with_arg(k1_marker, sandbox.user.uid) == [], 2.0)


def test_a_stop_after_the_lock_folder_is_deleted_stops_the_job_for_good(sandbox: Sandbox) -> None:
    (b1, b1_marker), (b2, b2_marker) = install_shared(sandbox, "b1"), install_shared(sandbox, "b2")
    house, anchor = resident_and_anchor(sandbox)
    other = pids_with_arg(b2_marker, sandbox.user.uid)
    folder = sandbox.lock_dir()
    assert folder and os.path.isdir(folder)
    shutil.rmtree(folder)  # a /tmp cleaner: the locks, the resident's socket and pid file go with it
    proc = sandbox.ws("stop", b1)
    assert proc.returncode == 0 and proc.stdout.strip() == f"stopped {b1}", (proc.stdout, proc.stderr)
    # Stopped by its resident, not around it: not started again.
    assert holds_for(lambda: pids_with_arg(b1_marker, sandbox.user.uid) == [], 3.0), "b1 was started again"
    info = sandbox.status(b1)
    assert not info["running"] and not info["enabled"], info
    assert pids_with_arg(b2_marker, sandbox.user.uid) == other and alive(house) and alive(anchor)
    wait_for(lambda: any(f.endswith(".sock") for f in os.listdir(folder)), 5, what="the socket put back")
    # And uninstall of the other, through the socket put back: gone for good, the resident with it.
    assert sandbox.ok("uninstall", b2).stdout.strip().startswith(f"uninstalled {b2}")
    assert holds_for(lambda: pids_with_arg(b2_marker, sandbox.user.uid) == [], 2.0)
