"""The shared resident's restart after `kill -9` of one job's daemon: when the resident's children
are only the other jobs' daemons, nothing of the dead tree is left and /proc is not scanned (the
restart's cost does not grow with the host's processes); anything else among its children, or a
kernel that does not list them, and it scans as before. Fake world: every time is simulated."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

from fakeworld import SUPERVISOR, T0, TERM, FakeProc
from housekit import HouseSetup

from watchdog_singleton.proc.children import own_children


def kill_9_at(s: HouseSetup, when: float, name: str, scans_then: list[int]) -> None:
    def kill() -> None:
        [pid] = [p for p in s.live(name) if s.world.procs[p].ppid == SUPERVISOR]
        scans_then.append(s.world.scans)
        s.world.exit(pid, -9)
    s.world.at(when, kill)


def scans_at_restart(s: HouseSetup, name: str, scans: list[int]) -> None:
    """Count the scans made by the time `name`'s daemon is spawned again."""
    def note(proc: FakeProc) -> None:
        if proc.born > T0:
            scans.append(s.world.scans)
    s.behaviour[name] = note


def crowd(s: HouseSetup, count: int) -> None:
    for n in range(count):
        s.take(s.job(f"other{n}"))


def test_restart_beside_other_jobs_daemons_does_not_scan_proc(tmp_path: Any) -> None:
    s = HouseSetup(tmp_path)
    crowd(s, 5)
    s.take(s.job("victim"))
    before: list[int] = []
    at_restart: list[int] = []
    kill_9_at(s, T0 + 3, "victim", before)
    scans_at_restart(s, "victim", at_restart)
    states: list[Any] = []
    s.world.at(T0 + 4, lambda: states.append(s.store.load("victim")))
    s.stop_all_at(T0 + 5)
    s.house.run()
    assert s.births("victim") == [0.0, 3.0]
    assert at_restart == before, "the restart scanned /proc though the resident's children were all known"
    for n in range(5):
        assert s.births(f"other{n}") == [0.0]
    [state] = states
    assert state.last_exit_code == -9 and state.restarts == 1 and state.phase == "running"


def test_an_orphan_of_the_killed_daemon_is_found_by_a_scan_and_stopped(tmp_path: Any) -> None:
    """The daemon's child is the resident's child once the daemon dies: an unknown child, so the
    scan runs, finds it by the job's token, and stops it before the restart."""
    s = HouseSetup(tmp_path)
    crowd(s, 3)
    s.take(s.job("victim", grace=1.0))
    orphans: list[FakeProc] = []

    def forks_a_worker(proc: FakeProc) -> None:
        if proc.born == T0:
            s.world.after(0.5, lambda: orphans.append(s.world.fork(proc.pid, argv=["worker"])))
    s.behaviour["victim"] = forks_a_worker
    before: list[int] = []
    kill_9_at(s, T0 + 3, "victim", before)
    restarted_with: list[list[int]] = []
    s.world.at(T0 + 4, lambda: restarted_with.append(s.live("victim")))
    s.stop_all_at(T0 + 5)
    s.house.run()
    [orphan] = orphans
    assert orphan.ppid == SUPERVISOR, "the orphan was not re-parented to the resident"
    assert TERM in orphan.signals and orphan.pid not in s.world.procs, "the dead daemon's orphan was left running"
    assert s.world.deaths[orphan.pid] == T0 + 3, "the orphan was not stopped before the restart"
    assert s.world.scans > before[0]
    first, again = s.births("victim")
    assert first == 0.0 and 3.0 <= again < 3.1  # once the orphan's stop has looked again for the tree
    [daemon] = restarted_with[0]
    assert daemon != orphan.pid
    assert "leftover" in s.log("victim")


def test_a_kernel_that_does_not_list_children_gets_the_scan(tmp_path: Any) -> None:
    s = HouseSetup(tmp_path)
    s.world.lists_children = False
    crowd(s, 2)
    s.take(s.job("victim"))
    before: list[int] = []
    at_restart: list[int] = []
    kill_9_at(s, T0 + 3, "victim", before)
    scans_at_restart(s, "victim", at_restart)
    s.stop_all_at(T0 + 5)
    s.house.run()
    assert s.births("victim") == [0.0, 3.0]
    assert at_restart[0] > before[0]


def test_a_forking_jobs_followed_process_does_not_vouch_for_the_resident_s_children(tmp_path: Any) -> None:
    """A followed process may be another's child, reaped without our knowing: its pid is no proof."""
    s = HouseSetup(tmp_path)
    s.take(s.job("forker", forking=True))

    def background(proc: FakeProc) -> None:
        def go() -> None:
            s.world.fork(proc.pid, argv=["bg"])
            s.world.exit(proc.pid, 0)
        s.world.after(0.2, go)
    s.behaviour["forker"] = background
    s.take(s.job("victim"))
    before: list[int] = []
    at_restart: list[int] = []
    kill_9_at(s, T0 + 3, "victim", before)
    scans_at_restart(s, "victim", at_restart)
    s.stop_all_at(T0 + 5)
    s.house.run()
    assert s.births("victim") == [0.0, 3.0]
    assert at_restart[0] > before[0]


def test_own_children_lists_a_real_child_and_not_a_grandchild() -> None:
    """/proc/self/task/*/children on this kernel: our child, living or exited and not reaped."""
    child = subprocess.Popen([sys.executable, "-c", "import subprocess, sys; "
                              "p = subprocess.Popen(['sleep', '30']); print(p.pid, flush=True); sys.stdin.read(); "
                              "p.kill(); p.wait()"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        grandchild = int(child.stdout.readline())
        listed = own_children()
        assert listed is not None, "this kernel has no /proc/self/task/*/children"
        assert child.pid in listed and grandchild not in listed and os.getpid() not in listed
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(timeout=30)
