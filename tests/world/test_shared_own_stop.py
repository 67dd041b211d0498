"""The shared resident: a stop a job's own run asks for (its timeout, its --max-lifetime, what its
daemon left behind when it exited) waits out the job's grace beside the loop, as a stop asked over
the socket does: another job's restart meanwhile is not held back. Fake world, simulated time."""

from __future__ import annotations

from typing import Any

import pytest
from fakeworld import KILL, T0, TERM, FakeProc
from housekit import HouseSetup

from watchdog_singleton.supervisor.house import ENDING_LOOK

GRACE = 10.0


def ignores_term(proc: FakeProc) -> None:
    proc.ignores_term = True


def kill_9_at(s: HouseSetup, when: float, name: str) -> None:
    s.world.at(when, lambda: s.world.exit(s.live(name)[0], -9))


def test_a_timeout_stop_of_one_job_never_holds_back_another_jobs_restart(tmp_path: Any) -> None:
    s = HouseSetup(tmp_path)
    s.take(s.job("slow", periodic=True, every=60.0, timeout=2.0, grace=GRACE))
    s.take(s.job("other"))
    s.behaviour["slow"] = ignores_term
    kill_9_at(s, T0 + 3, "other")
    s.stop_all_at(T0 + 20)
    s.house.run()
    assert s.births("other") == [0.0, 3.0], "the other job's restart waited for the timeout's grace"
    [run] = [p for p in s.world.spawned if p.token == s.jobs["slow"].lock_path]
    assert run.signals[:1] == [TERM] and KILL in run.signals
    assert s.world.deaths[run.pid] == pytest.approx(T0 + 2 + GRACE, abs=0.1)  # SIGKILL at the grace's end
    assert "timed out" in s.log("slow")


def test_a_max_lifetime_stop_holds_its_own_restart_but_not_anothers(tmp_path: Any) -> None:
    s = HouseSetup(tmp_path)
    s.take(s.job("aging", max_lifetime=2.0, grace=GRACE))
    s.take(s.job("other"))
    s.behaviour["aging"] = lambda proc: setattr(proc, "ignores_term", proc.born == T0)
    kill_9_at(s, T0 + 3, "other")
    s.stop_all_at(T0 + 20)
    s.house.run()
    assert s.births("other") == [0.0, 3.0], "the other job's restart waited for the lifetime's grace"
    first, again = s.births("aging")[:2]  # the second copy ends at its lifetime too, at once
    assert first == 0.0 and again == pytest.approx(2 + GRACE, abs=0.1), "restarted before its old copy was gone"


def test_leftovers_of_an_exited_daemon_are_stopped_beside_the_loop_before_its_restart(tmp_path: Any) -> None:
    s = HouseSetup(tmp_path)
    s.take(s.job("messy", grace=GRACE))
    s.take(s.job("other"))
    left: list[FakeProc] = []

    def leaves_a_child(proc: FakeProc) -> None:
        if proc.born != T0:
            return

        def go() -> None:
            child = s.world.fork(proc.pid, argv=["stubborn"])
            child.ignores_term = True
            left.append(child)
            s.world.exit(proc.pid, 1)
        s.world.after(2.0, go)
    s.behaviour["messy"] = leaves_a_child
    kill_9_at(s, T0 + 3, "other")
    states: list[Any] = []
    s.world.at(T0 + 5, lambda: states.append(s.store.load("messy")))
    s.stop_all_at(T0 + 20)
    s.house.run()
    assert s.births("other") == [0.0, 3.0], "the other job's restart waited for the leftovers' grace"
    [stubborn] = left
    assert s.world.deaths[stubborn.pid] == pytest.approx(T0 + 2 + GRACE, abs=0.1)
    first, again = s.births("messy")
    assert first == 0.0 and again == pytest.approx(2 + GRACE, abs=0.1), "restarted while its leftovers ran"
    assert states[0].phase == "stopping"
    state = s.store.load("messy")
    assert state is not None and state.last_exit_code == -15 and state.restarts == 1
    assert "leftover process(es)" in s.log("messy")


def test_a_stop_of_the_resident_during_a_jobs_own_stop_ends_both(tmp_path: Any) -> None:
    s = HouseSetup(tmp_path)
    s.take(s.job("aging", max_lifetime=2.0, grace=GRACE))
    s.behaviour["aging"] = ignores_term
    s.stop_all_at(T0 + 4)
    s.house.run()
    assert s.births("aging") == [0.0]
    assert s.live("aging") == []
    state = s.store.load("aging")
    assert state is not None and state.phase == "stopped" and state.supervisor_pid is None
    assert s.locks["aging"].released


def test_a_stop_beside_the_loop_waits_between_looks_even_past_an_old_deadline(tmp_path: Any) -> None:
    """The exited daemon's --max-lifetime passes while its leftovers are stopped: the loop keeps
    looking every ENDING_LOOK, it does not spin on the stale deadline."""
    s = HouseSetup(tmp_path)
    s.take(s.job("messy", grace=GRACE, max_lifetime=3.0))

    def leaves_a_child(proc: FakeProc) -> None:
        if proc.born == T0:
            def go() -> None:
                s.world.fork(proc.pid, argv=["stubborn"]).ignores_term = True
                s.world.exit(proc.pid, 1)
            s.world.after(2.0, go)
    s.behaviour["messy"] = leaves_a_child
    waits: list[float] = []
    world_wait = s.world.wait

    def counting_wait(timeout: float) -> None:
        waits.append(s.world.now)
        assert len(waits) < 5000, "the loop spins"
        world_wait(timeout)
    s.house.wait = counting_wait
    s.stop_all_at(T0 + 13)
    s.house.run()
    during = [t for t in waits if T0 + 2 < t < T0 + 2 + GRACE]
    assert len(during) <= GRACE / ENDING_LOOK * 2, len(during)
    assert s.births("messy")[:2] == [0.0, pytest.approx(2 + GRACE, abs=0.1)]
