"""`status` says what it knows and what it could not read: a state folder that cannot be written
or read, an adopted copy's real start, and the next due time of a sub-minute period."""

from __future__ import annotations

import os
import signal
import time

from conftest import Sandbox, pids_with_arg, wait_for

from watchdog_singleton.commands.status import HostView, _state_word, describe
from watchdog_singleton.job.model import Job
from watchdog_singleton.proc import procs
from watchdog_singleton.state.store import RunState
from watchdog_singleton.timefmt import now_iso


def host() -> HostView:
    return HostView({}, False, None, set())


def test_an_adopted_copys_up_counts_from_its_real_start_not_the_adoption() -> None:
    # Adoption records the copy it found as it was: a pid, its start in /proc, and "started" now.
    pid = 1  # a copy that runs since the boot (or since the container started)
    start = procs.start_time(pid)
    assert start is not None
    with open("/proc/stat") as f:
        btime = next(int(line.split()[1]) for line in f if line.startswith("btime "))
    real = btime + start / os.sysconf("SC_CLK_TCK")
    assert time.time() - real > 2, "pid 1 started too recently for this test"
    state = RunState(name="x", phase="running", boot_id=procs.boot_id(), pid=pid, pid_start=start,
                     started_at=now_iso(), lean=True)
    info = describe("x", None, state, host())
    assert info["running"] and info["pid"] == pid
    assert info["started_at"] == time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(real))


def test_an_every_job_waiting_shows_its_next_due_to_the_second() -> None:
    base = {"running": False, "phase": "waiting", "next_start_at": None, "installed": True, "enabled": True,
            "cron_entry": "enabled", "periodic": True, "next_due_at": "2026-01-02T10:11:12+0000"}
    assert _state_word({**base, "every": 5.0}) == "waiting (next 10:11:12)"
    assert _state_word({**base, "every": None}) == "waiting (next 10:11)"  # a cron schedule: whole minutes


def test_a_job_whose_state_cannot_be_read_is_unknown_and_status_says_what_it_could_not_read() -> None:
    job = Job(name="x", command=["/bin/true"], workdir="/", lock_dir="/nonexistent")
    info = describe("x", job, None, host(), state_error="cannot read /s/run/x.json: Permission denied")
    assert info["phase"] == "unknown" and not info["running"]
    assert info["problem"].startswith("cannot read /s/run/x.json: Permission denied")
    assert "lock is free" in info["problem"]


def test_status_with_a_read_only_or_unreadable_state_folder_says_so(sandbox: Sandbox) -> None:
    name = sandbox.job("rostate")
    sandbox.ok("install", name, "--", "/bin/sleep", "1000")
    first = sandbox.status(name)["pid"]
    assert first
    run = os.path.join(sandbox.state_root, "run")
    try:
        os.chmod(run, 0o555)  # read-only: the supervisor cannot record the restart
        os.kill(first, signal.SIGKILL)
        wait_for(lambda: sandbox.status(name)["pid"] not in (None, first), 20, what="the restarted daemon")
        proc = sandbox.ws("status", name)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        row, note = proc.stdout.splitlines()[1:3]
        assert " running " in row and " - " not in row.split("running", 1)[1][:12], row
        assert note.strip() == (f"cannot write {run}: its state on file is out of date; "
                                "the pid shown is read from the process table")
        os.chmod(run, 0o000)  # unreadable
        proc = sandbox.ws("status", name)
        assert proc.returncode == 0, "its lock is held: a copy runs"
        row, note = proc.stdout.splitlines()[1:3]
        assert " unknown " in row and "running" not in row
        assert note.strip() == (f"cannot read {run}/{name}.json: Permission denied: what runs is unknown, "
                                "but its lock is held, so a copy runs")
        listing = sandbox.ws("status")
        assert f"cannot list {run}: Permission denied" in listing.stdout and listing.returncode == 0
    finally:
        os.chmod(run, 0o700)


def test_three_kills_of_a_real_forking_daemon_show_three_restarts_and_last_exit_sigkill(sandbox: Sandbox) -> None:
    name = sandbox.job("fork3")
    marker = "1005"
    sandbox.ok("install", name, "--forking", "--", "/bin/sh", "-c", f"(setsid sleep {marker} &) ; exit 0")
    killed: list[int] = []
    for _ in range(3):
        [daemon] = wait_for(lambda: [p for p in pids_with_arg(marker, sandbox.user.uid) if p not in killed], 15,
                            what="the background copy")
        def followed(pid: int = daemon) -> bool:
            return bool(sandbox.status(name)["pid"] == pid)
        wait_for(followed, 10, what="status to follow it")
        os.kill(daemon, signal.SIGKILL)
        killed.append(daemon)
    wait_for(lambda: [p for p in pids_with_arg(marker, sandbox.user.uid) if p not in killed], 15,
             what="the fourth copy")
    info = wait_for(lambda: (lambda i: i if i["running"] else None)(sandbox.status(name)), 10, what="running")
    assert (info["restarts"], info["last_exit_code"]) == (3, -9), info
    row = sandbox.ok("status", name).stdout.splitlines()[1]
    assert " 3 " in row and "SIGKILL" in row, row
    sandbox.ok("uninstall", name)
