"""The lock watch, an idle supervisor's only timer (issue 19): once a minute, and at once on SIGHUP,
which the tick that finds the lock file replaced sends to the live supervisor."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import Any, Callable

from fakeworld import T0, FakeLock, FakeWorld, log_of, supervisor

from watchdog_singleton.job.model import Job
from watchdog_singleton.lock.flock import FlockLock
from watchdog_singleton.proc import procs
from watchdog_singleton.state.phases import Phase
from watchdog_singleton.state.store import RunState, StateStore
from watchdog_singleton.supervisor.lockwatch import CHECK_SECONDS
from watchdog_singleton.tick.launch import settle


class DeletedLock(FakeLock):
    """A lock whose file a /tmp cleaner deleted: every check finds it gone and puts it back."""

    def __init__(self) -> None:
        super().__init__()
        self.repairs: list[float] = []
        self.clock: Callable[[], float] = lambda: 0.0

    def still_ours(self) -> bool:
        return False

    def repair(self) -> str:
        self.repairs.append(self.clock())
        return "repaired"


def test_an_idle_supervisor_wakes_at_most_once_a_minute(tmp_path: Any) -> None:
    world = FakeWorld()
    waits: list[float] = []
    world_wait = world.wait

    def counted(timeout: float) -> None:
        waits.append(world.now)
        world_wait(timeout)

    world.wait = counted  # type: ignore[method-assign]
    sup = supervisor(tmp_path, world)
    world.at(T0 + 600, sup.request_stop)
    sup.run()
    idle = [t for t in waits if T0 + 5 <= t < T0 + 600]  # after the start, before the stop
    assert CHECK_SECONDS >= 60
    assert len(idle) <= 10, f"{len(idle)} wake-ups in 10 idle minutes"


def test_sighup_makes_the_supervisor_put_its_lock_back_at_once(tmp_path: Any) -> None:
    world = FakeWorld()
    sup = supervisor(tmp_path, world)
    lock = DeletedLock()
    lock.clock = lambda: world.now
    sup.lock = lock
    world.at(T0 + 5, lambda: sup.wakeups.signals.append(signal.SIGHUP))
    world.at(T0 + 6, sup.request_stop)
    sup.run()
    assert lock.repairs == [T0 + 5], "the lock was not put back at the SIGHUP"
    assert "was removed; put it back" in log_of(sup)


# A stand-in for a live supervisor: it says when SIGHUP arrives (the default action would kill it).
HANGS_UP = """
import signal, sys, time
signal.signal(signal.SIGHUP, lambda *_: (print("hup", flush=True), sys.exit(0)))
print("ready", flush=True)
time.sleep(60)
"""


def test_a_tick_that_finds_the_lock_file_replaced_asks_the_live_supervisor_to_look(tmp_path: Any) -> None:
    job = Job(name="j", command=["/bin/daemon"], workdir="/", lock_dir=os.path.join(str(tmp_path), "locks"))
    states = StateStore(os.path.join(str(tmp_path), "state"))
    live = subprocess.Popen([sys.executable, "-c", HANGS_UP], stdout=subprocess.PIPE, text=True)
    try:
        assert live.stdout is not None and live.stdout.readline() == "ready\n"
        states.save(RunState(name="j", phase=Phase.RUNNING, boot_id=procs.boot_id(), supervisor_pid=live.pid,
                             supervisor_start=procs.start_time(live.pid)))
        lock = FlockLock(job.lock_dir, job.name)
        assert lock.try_acquire(), "the path's file is fresh: nobody holds it"
        assert settle(lock, job, states) is False, "the launcher went on beside a live supervisor"
        assert lock.fd is None, "the launcher kept its lock on the fresh file"
        out, _ = live.communicate(timeout=10)
        assert out == "hup\n"
    finally:
        if live.poll() is None:
            live.kill()
            live.wait()


def test_a_tick_never_sends_sighup_to_a_launcher_that_has_just_claimed(tmp_path: Any) -> None:
    job = Job(name="j", command=["/bin/daemon"], workdir="/", lock_dir=os.path.join(str(tmp_path), "locks"))
    states = StateStore(os.path.join(str(tmp_path), "state"))
    live = subprocess.Popen([sys.executable, "-c", HANGS_UP], stdout=subprocess.PIPE, text=True)
    try:
        assert live.stdout is not None and live.stdout.readline() == "ready\n"
        states.save(RunState(name="j", phase=Phase.STARTING, boot_id=procs.boot_id(), supervisor_pid=live.pid,
                             supervisor_start=procs.start_time(live.pid)))
        lock = FlockLock(job.lock_dir, job.name)
        assert lock.try_acquire()
        assert settle(lock, job, states) is False
        live.send_signal(signal.SIGTERM)
        out, _ = live.communicate(timeout=10)  # a SIGHUP sent before would be handled first
        assert "hup" not in out
    finally:
        if live.poll() is None:
            live.kill()
            live.wait()
