"""`status` says when a plain job's supervisor cannot do its work: SIGKILLed while the daemon runs
on holding the lock (nothing restarts it), or SIGSTOPped (nothing restarts it until SIGCONT)."""

from __future__ import annotations

import os
import signal

from conftest import Sandbox, pids_with_arg, wait_for

from watchdog_singleton.commands.status import HostView, describe
from watchdog_singleton.proc import procs
from watchdog_singleton.state.store import RunState


def host() -> HostView:
    return HostView({}, False, None, set())


def record(supervisor: int, daemon: int, phase: str = "running", lean: bool = False) -> RunState:
    return RunState(name="x", phase=phase, boot_id=procs.boot_id(), supervisor_pid=supervisor,
                    supervisor_start=procs.start_time(supervisor), pid=daemon, pid_start=procs.start_time(daemon),
                    lean=lean)


def test_a_record_whose_supervisor_is_not_alive_is_gone_unless_it_ended_on_purpose_or_is_lean() -> None:
    me = os.getpid()
    alive = record(me, me)
    assert alive.supervisor_trouble() == ""
    dead = record(me, me)
    dead.supervisor_start = (dead.supervisor_start or 0) + 1  # another process's start: ours is gone
    assert dead.supervisor_trouble() == "gone"
    for phase in ("stopped", "exited"):
        dead.phase = phase
        assert dead.supervisor_trouble() == ""
    assert record(me, me, lean=True).supervisor_trouble() == ""
    info = describe("x", None, alive, host())
    assert info["supervisor"] == "" and info["problem"] == ""


def test_status_says_a_killed_supervisor_is_gone_and_a_stopped_one_stopped(sandbox: Sandbox) -> None:
    name = sandbox.job("orphaned")
    # A schedule cron will not fire during the test: a tick must not put a supervisor back.
    sandbox.ok("install", name, "--schedule", "0 0 1 1 *", "--", "/bin/sleep", "1031")
    wait_for(lambda: sandbox.status(name)["pid"], 20, what="the daemon")
    info = sandbox.status(name)
    supervisor, daemon = info["supervisor_pid"], info["pid"]
    assert info["supervisor"] == "" and supervisor
    try:
        os.kill(supervisor, signal.SIGSTOP)
        wait_for(lambda: getattr(procs.read_proc(supervisor), "state", "") in ("T", "t"), 10,
                 what="the supervisor stopped")
        info = sandbox.status(name)
        assert info["supervisor"] == "stopped" and "SIGCONT" in info["problem"], info
        assert "(supervisor stopped)" in sandbox.ok("status", name).stdout
        os.kill(supervisor, signal.SIGCONT)
        wait_for(lambda: sandbox.status(name)["supervisor"] == "", 10, what="the supervisor at work again")
        started = procs.start_time(supervisor)
        os.kill(supervisor, signal.SIGKILL)
        wait_for(lambda: not procs.is_alive(supervisor, started), 10, what="the supervisor gone")
        info = sandbox.status(name)
        assert info["running"] and info["pid"] == daemon, info  # the daemon runs on, holding the lock
        assert info["supervisor"] == "gone" and f"restart {name}" in info["problem"], info
        text = sandbox.ok("status", name).stdout
        assert "running (supervisor gone)" in text and "is gone" in text, text
        sandbox.ok("restart", name)
        wait_for(lambda: sandbox.status(name)["supervisor"] == "" and sandbox.status(name)["pid"], 20,
                 what="a new supervisor")
        assert daemon not in pids_with_arg("1031", sandbox.user.uid)
    finally:
        try:
            os.kill(supervisor, signal.SIGCONT)
        except ProcessLookupError:
            pass
