"""The shared resident (install --shared) driven through the fake world: several jobs in one loop,
each exit dispatched to its own job, and one job's trouble never reaching another's. No processes,
no sleeps; every time below is simulated."""

from __future__ import annotations

import os
from typing import Any, Callable

import pytest
from fakeworld import SUPERVISOR, T0, TERM, FakeLock, FakeProc, FakeWorld
from housekit import HouseSetup as Setup

from watchdog_singleton.supervisor.lockwatch import CHECK_SECONDS


def crash_loop(world: FakeWorld, seconds: float = 0.1, code: int = 1) -> Callable[[FakeProc], None]:
    def behave(proc: FakeProc) -> None:
        world.after(seconds, lambda: world.exit(proc.pid, code))
    return behave


def test_one_job_crash_looping_leaves_the_other_untouched(tmp_path: Any) -> None:
    s = Setup(tmp_path)
    s.take(s.job("flaky", backoff_initial=1.0, backoff_max=4.0))
    s.take(s.job("steady"))
    s.behaviour["flaky"] = crash_loop(s.world)
    s.stop_all_at(T0 + 20)
    assert s.house.run() == 0
    assert len(s.births("flaky")) >= 6, "the crash loop was not restarted by its own job"
    assert s.births("steady") == [0.0], "the steady job was started again"
    steady = [p for p in s.world.spawned if p.token == s.jobs["steady"].lock_path][0]
    assert steady.signals == [TERM], "the steady daemon got a signal before the resident's stop"
    assert s.store.load("flaky").restarts >= 5  # type: ignore[union-attr]
    assert s.store.load("steady").restarts == 0  # type: ignore[union-attr]
    assert s.live("flaky") == [] and s.live("steady") == []


def test_kill_9_of_one_daemon_restarts_only_that_job(tmp_path: Any) -> None:
    s = Setup(tmp_path)
    for name in ("a", "b", "c"):
        s.take(s.job(name))
    victim: list[int] = []

    def kill_b() -> None:
        [pid] = s.live("b")
        victim.append(pid)
        s.world.exit(pid, -9)
    s.world.at(T0 + 3, kill_b)
    states: dict[str, Any] = {}
    s.world.at(T0 + 5, lambda: states.update({n: s.store.load(n) for n in ("a", "b", "c")}))
    s.stop_all_at(T0 + 6)
    s.house.run()
    assert s.births("a") == [0.0] and s.births("c") == [0.0]
    assert s.births("b") == [0.0, 3.0]
    assert states["b"].last_exit_code == -9 and states["b"].restarts == 1
    assert states["a"].restarts == 0 and states["c"].restarts == 0
    assert states["b"].supervisor_pid == SUPERVISOR and states["b"].house == "/fake/.house.sock"


def test_an_exception_in_one_jobs_handling_stops_only_that_job(tmp_path: Any) -> None:
    s = Setup(tmp_path)
    s.take(s.job("broken"))
    s.take(s.job("fine"))
    seen: dict[str, Any] = {}

    def break_it() -> None:
        def boom(now: float) -> None:
            raise RuntimeError("a bug in our code")
        s.house.members["broken"].sup.life.tick = boom  # type: ignore[method-assign]

    def look() -> None:
        seen["members"] = sorted(s.house.members)
        seen["broken"], seen["fine"] = s.live("broken"), s.live("fine")
    s.world.at(T0 + 2, break_it)
    s.world.at(T0 + 30, look)
    s.stop_all_at(T0 + 31)
    s.house.run()
    assert seen["members"] == ["fine"]
    assert seen["broken"] == [] and len(seen["fine"]) == 1
    assert s.births("fine") == [0.0]
    assert s.locks["broken"].released
    assert "RuntimeError: a bug in our code" in s.log("broken")
    state = s.store.load("broken")
    assert state is not None and state.supervisor_pid is None and state.phase == "exited"
    assert [f.split(":")[0] for f in s.house.failures] == ["broken"]


def test_stop_of_one_job_leaves_another_jobs_orphan_that_cleared_its_environment(tmp_path: Any) -> None:
    """Both orphans are the resident's children now; only the token tells whose they are."""
    s = Setup(tmp_path)
    s.take(s.job("a", grace=1.0))
    s.take(s.job("b"))
    kept: dict[str, FakeProc] = {}

    def b_double_forks(proc: FakeProc) -> None:
        def go() -> None:
            middle = s.world.fork(proc.pid)
            kept["b-orphan"] = s.world.fork(middle.pid, token=None)  # env -i: no token
            s.world.exit(middle.pid, 0)
        s.world.after(0.5, go)

    def a_double_forks(proc: FakeProc) -> None:
        def go() -> None:
            middle = s.world.fork(proc.pid)
            kept["a-grandchild"] = s.world.fork(middle.pid)  # keeps a's token
            s.world.exit(middle.pid, 0)
        s.world.after(0.5, go)
    s.behaviour["a"], s.behaviour["b"] = a_double_forks, b_double_forks
    answers: list[bool] = []
    s.world.at(T0 + 2, lambda: s.house.stop_job("a", answers.append))
    seen: dict[str, Any] = {}
    s.world.at(T0 + 5, lambda: seen.update(members=sorted(s.house.members), b=s.live("b")))
    s.stop_all_at(T0 + 6)
    s.house.run()
    assert answers == [True]
    assert seen["members"] == ["b"]
    assert kept["a-grandchild"].pid not in s.world.procs, "a's grandchild outlived a's stop"
    assert kept["b-orphan"].signals == [] or s.world.deaths[kept["b-orphan"].pid] >= T0 + 6
    assert kept["b-orphan"].ppid == SUPERVISOR
    state = s.store.load("a")
    assert state is not None and state.phase == "stopped" and state.supervisor_pid is None


def test_the_lock_watches_of_all_jobs_share_one_wake_up(tmp_path: Any) -> None:
    s = Setup(tmp_path)
    s.take(s.job("first"))
    s.world.at(T0 + 3.3, lambda: s.take(s.job("second")))
    s.world.at(T0 + 7.7, lambda: s.take(s.job("third")))
    waits: list[float] = []
    world_wait = s.world.wait

    def counting_wait(timeout: float) -> None:
        waits.append(s.world.now)
        world_wait(timeout)
    s.house.wait = counting_wait
    stop = T0 + 20 + 6 * CHECK_SECONDS + 1
    s.stop_all_at(stop)
    s.house.run()
    idle = [t for t in waits if T0 + 20 < t < stop]
    # One wake-up per lock check for all three jobs, not one for each.
    assert len(idle) == 6, idle
    for name in ("first", "second", "third"):
        assert s.locks[name].looks >= 6


def test_sigterm_to_the_resident_stops_every_job_and_releases_every_lock(tmp_path: Any) -> None:
    s = Setup(tmp_path)
    for name in ("a", "b"):
        s.take(s.job(name, grace=5.0))
    for proc_name in ("a", "b"):
        s.behaviour[proc_name] = lambda proc: setattr(proc, "ignores_term", True)
    s.stop_all_at(T0 + 1)
    s.house.run()
    # Both graces ran side by side: SIGKILL to both 5 s after the stop, not 5 s and then 10 s.
    deaths = sorted(s.world.deaths.values())
    assert deaths == pytest.approx([T0 + 6, T0 + 6], abs=0.1)
    for name in ("a", "b"):
        assert s.locks[name].released
        state = s.store.load(name)
        assert state is not None and state.phase == "stopped" and state.supervisor_pid is None
    assert s.house.members == {}


def test_a_job_handed_over_twice_is_refused_and_the_first_runs_on(tmp_path: Any) -> None:
    s = Setup(tmp_path)
    s.take(s.job("once"))
    second = FakeLock(s.jobs["once"].lock_path)
    with pytest.raises(ValueError, match="supervised here already"):
        s.house.take(s.jobs["once"], second)
    assert second.released
    s.stop_all_at(T0 + 2)
    s.house.run()
    assert s.births("once") == [0.0]


def test_two_answers_sent_back_to_back_are_read_one_at_a_time() -> None:
    """`taken` and `ready` can both wait in the socket when the tick reads: neither is lost."""
    import socket

    from watchdog_singleton.supervisor.housewire import receive, send

    house, tick = socket.socketpair(socket.AF_UNIX)
    house.settimeout(5)
    tick.settimeout(5)
    r, w = os.pipe()
    try:
        send(house, {"taken": 1})
        send(house, {"ready": "ok 2"})
        assert receive(tick) == ({"taken": 1}, [])
        assert receive(tick) == ({"ready": "ok 2"}, [])
        send(tick, {"op": "take"}, (w,))  # a lock's descriptors ride along
        message, fds = receive(house)
        assert message == {"op": "take"} and len(fds) == 1
        os.close(fds[0])
        house.close()
        assert receive(tick) == (None, [])
    finally:
        house.close()
        tick.close()
        os.close(r)
        os.close(w)


def test_a_periodic_shared_job_keeps_its_due_times_beside_a_daemon(tmp_path: Any) -> None:
    s = Setup(tmp_path)
    s.take(s.job("tick", periodic=True, every=5.0))
    s.take(s.job("daemon"))

    def one_second(proc: FakeProc) -> None:
        s.world.after(1.0, lambda: s.world.exit(proc.pid, 0))
    s.behaviour["tick"] = one_second
    s.stop_all_at(T0 + 22)
    s.house.run()
    assert s.births("tick") == [0.0, 5.0, 10.0, 15.0, 20.0]
    assert s.births("daemon") == [0.0]
    state = s.store.load("tick")
    assert state is not None and state.runs == 5 and state.failures == 0


def test_shared_is_a_toml_key_and_a_default_for_a_whole_file() -> None:
    from watchdog_singleton.config import parse

    text = ('[defaults]\nshared = true\n[jobs.a]\ncommand = ["/bin/true"]\n'
            '[jobs.b]\ncommand = ["/bin/true"]\nshared = false\n')
    config = parse(text, "/srv/jobs.toml")
    requests = {spec.name: config.request(spec) for spec in config.jobs}
    assert requests["a"].shared is True and requests["b"].shared is False


def test_a_deleted_socket_and_house_lock_are_put_back_at_the_next_look(tmp_path: Any) -> None:
    """A /tmp cleaner: the next tick must still find the resident, not start a second one."""
    from watchdog_singleton.lock.flock import FlockLock
    from watchdog_singleton.supervisor.housemain import Door
    from watchdog_singleton.supervisor.housewire import ask, house_name, socket_path

    folder = os.path.join(str(tmp_path), "locks")
    os.mkdir(folder, 0o700)
    house_lock = FlockLock(folder, house_name(str(tmp_path)))
    assert house_lock.try_acquire()
    s = Setup(tmp_path)
    door = Door(s.house, socket_path(folder, str(tmp_path)), house_lock)
    try:
        os.unlink(socket_path(folder, str(tmp_path)))
        os.unlink(house_lock.path)
        door.look()
        assert house_lock.still_ours()
        assert not FlockLock(folder, house_name(str(tmp_path))).try_acquire()
        s.house.requests.clear()
        asked: list[Any] = []

        def serve() -> None:
            s.house.pump.wait(1.0)  # accept
            s.house.pump.wait(1.0)  # read the request
            for request in s.house.requests:
                request()
        import threading

        server = threading.Thread(target=serve)
        server.start()
        asked.append(ask(socket_path(folder, str(tmp_path)), {"op": "ping"}, 5.0))
        server.join()
        assert asked[0] is not None and asked[0]["jobs"] == []
    finally:
        door.close()
        house_lock.release()
        s.house.close()


def test_one_jobs_stop_never_holds_back_another_jobs_restart(tmp_path: Any) -> None:
    """A stop waits out its job's grace beside the loop, not in it: another job's daemon that dies
    meanwhile is restarted at once, not once the grace is over."""
    s = Setup(tmp_path)
    s.take(s.job("slow", grace=10.0))
    s.take(s.job("other"))
    s.behaviour["slow"] = lambda proc: setattr(proc, "ignores_term", True)
    answers: list[tuple[float, bool]] = []
    s.world.at(T0 + 2, lambda: s.house.stop_job("slow", lambda ok: answers.append((s.world.now, ok))))
    s.world.at(T0 + 3, lambda: s.world.exit(s.live("other")[0], -9))
    s.stop_all_at(T0 + 20)
    s.house.run()
    assert s.births("other") == [0.0, 3.0], "the other job's restart waited for the stop"
    assert s.births("slow") == [0.0], "the stopped job started again"
    [(answered, ok)] = answers
    assert ok and answered == pytest.approx(T0 + 12, abs=0.1)  # SIGKILL at the end of its grace
    state = s.store.load("slow")
    assert state is not None and state.phase == "stopped" and state.supervisor_pid is None
    assert s.locks["slow"].released
