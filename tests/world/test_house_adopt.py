"""A new shared resident adopts the daemons a killed one left running (supervisor/adopt.py), driven
through the fake world: the adopted daemon is no child of ours, its end comes through the exit
watch (a pidfd in the real resident), and one adopted job's end or stop never touches another's.
No processes, no sleeps; every time below is simulated."""

from __future__ import annotations

import os
from typing import Any, Optional

from fakeworld import SUPERVISOR, TERM, FakeLock, FakeProc, FakeWorld

from watchdog_singleton.job.model import Job
from watchdog_singleton.proc.procs import UNKNOWN_EXIT
from watchdog_singleton.state.phases import Phase
from watchdog_singleton.state.store import RunState, StateStore
from watchdog_singleton.supervisor.adopt import adopt_orphans, orphans
from watchdog_singleton.supervisor.house import SIGTERM, House

T0 = 1000.0
DEAD_HOUSE = 3_999_999  # the killed resident: no process of the fake world
OLD_SOCKET = "/fake/.house-old.sock"


class HeldLock(FakeLock):
    """A job's lock file: held while any process of its tree (its token) lives, as a flock is by
    every process that inherited it; taken by the resident once none does."""

    def __init__(self, world: FakeWorld, path: str) -> None:
        super().__init__(path)
        self.world = world
        self.tries = 0
        self.taken = False

    def try_acquire(self) -> bool:
        self.tries += 1
        self.taken = not self.world.live(self.path)
        return self.taken


class Setup:
    def __init__(self, tmp_path: Any) -> None:
        self.dir = str(tmp_path)
        self.root = os.path.join(self.dir, "state")
        self.world = FakeWorld()
        self.store = StateStore(self.root)
        self.jobs: dict[str, Job] = {}
        self.daemons: dict[str, FakeProc] = {}
        self.locks: dict[str, HeldLock] = {}
        seams = self.world.seams()
        seams.load_job = lambda root, name: self.jobs.get(name)
        self.house = House(self.store, seams=seams, socket_path="/fake/.house.sock")
        self.house.open()

    def orphan(self, name: str, supervisor: Optional[int] = DEAD_HOUSE, **options: Any) -> FakeProc:
        """A shared job whose daemon runs on, re-parented to init, after its resident died."""
        logs = os.path.join(self.dir, "logs")
        job = Job(name=name, command=["/bin/daemon", name], workdir="/", lock_dir=os.path.join(self.dir, "locks"),
                  stdout_log=os.path.join(logs, f"{name}.out"), stderr_log=os.path.join(logs, f"{name}.err"),
                  shared=True, **options)
        self.jobs[name] = job
        daemon = self.world.stray(job.lock_path, job.command)
        self.daemons[name] = daemon
        start = self.world.start_time(daemon.pid)
        self.store.save(RunState(name=name, phase=Phase.RUNNING, boot_id="fake-boot", supervisor_pid=supervisor,
                                 supervisor_start=5 if supervisor else None, pid=daemon.pid, pid_start=start,
                                 started_at="2024-01-01T00:00:00Z", command=job.command, lock_path=job.lock_path,
                                 house=OLD_SOCKET, restarts=4))
        return daemon

    def adopt(self) -> list[str]:
        def make_lock(lock_dir: str, name: str) -> HeldLock:
            self.locks[name] = HeldLock(self.world, self.jobs[name].lock_path)
            return self.locks[name]
        return adopt_orphans(self.house, self.root, make_lock=make_lock)

    def births(self, name: str) -> list[float]:
        token = self.jobs[name].lock_path
        return [round(p.born - T0, 3) for p in self.world.spawned if p.token == token]

    def state(self, name: str) -> RunState:
        state = self.store.load(name)
        assert state is not None
        return state

    def log(self, name: str) -> str:
        with open(self.jobs[name].stderr_log) as f:
            return f.read()

    def stop_all_at(self, when: float) -> None:
        self.world.at(when, lambda: self.house.wakeups.signals.append(SIGTERM))


def test_a_new_resident_adopts_every_daemon_a_killed_one_left_running(tmp_path: Any) -> None:
    s = Setup(tmp_path)
    a, b = s.orphan("a"), s.orphan("b")
    assert s.adopt() == ["a", "b"]
    for name, daemon in (("a", a), ("b", b)):
        state = s.state(name)
        assert state.supervisor_pid == SUPERVISOR and state.house == "/fake/.house.sock"
        assert state.pid == daemon.pid and state.phase == Phase.RUNNING and state.restarts == 4
        assert "how the daemon ends will not be known" in state.message
    assert s.world.spawned == [], "an adopted daemon was started a second time"
    assert not any(lock.taken for lock in s.locks.values()), "the daemon's lock was taken from it"
    s.stop_all_at(T0 + 30)
    s.house.run()  # its end closes the logs: what was noted is written by then
    for name, daemon in (("a", a), ("b", b)):
        assert f"adopted running pid {daemon.pid}" in s.log(name)


def test_an_adopted_daemon_that_dies_is_restarted_at_once_and_the_other_untouched(tmp_path: Any) -> None:
    s = Setup(tmp_path)
    a, b = s.orphan("a"), s.orphan("b")
    s.adopt()
    s.world.at(T0 + 3, lambda: s.world.exit(a.pid, -9))  # kill -9: its parent (init) reaps it, not us
    seen: dict[str, RunState] = {}
    s.world.at(T0 + 4, lambda: seen.update(a=s.state("a"), b=s.state("b")))
    s.stop_all_at(T0 + 10)
    s.house.run()
    assert s.births("a") == [3.0], "the adopted daemon's end was not acted on at once"
    assert s.births("b") == []
    assert b.signals == [TERM], "the other adopted daemon got a signal before the resident's stop"
    assert seen["a"].last_exit_code == UNKNOWN_EXIT and seen["a"].restarts == 5
    assert seen["a"].pid == s.world.spawned[0].pid and seen["a"].phase == Phase.RUNNING
    assert seen["b"].pid == b.pid and seen["b"].restarts == 4
    assert s.locks["a"].taken, "restarted without its lock"
    assert "ended (how is unknown: it was adopted, not our child)" in s.log("a")


def test_leftovers_holding_the_lock_are_stopped_by_token_before_the_restart(tmp_path: Any) -> None:
    s = Setup(tmp_path)
    a = s.orphan("a")
    s.orphan("b")
    leftover = s.world.fork(a.pid)  # inherits the token and the lock
    s.adopt()
    s.world.at(T0 + 2, lambda: s.world.exit(a.pid, 0))
    s.stop_all_at(T0 + 10)
    s.house.run()
    assert TERM in leftover.signals and leftover.pid in s.world.deaths
    assert s.world.deaths[leftover.pid] < T0 + 2 + s.jobs["a"].grace + 0.5
    [restarted] = [p for p in s.world.spawned if p.token == s.jobs["a"].lock_path]
    assert s.world.tree_at_spawn[0] == [], "restarted beside what was left of the adopted tree"
    assert restarted.born >= s.world.deaths[leftover.pid]


def test_leftovers_that_closed_the_lock_are_found_by_a_scan_before_the_restart(tmp_path: Any) -> None:
    """An adopted daemon's orphans are not ours (it was not our child): its leftovers are always
    looked for in /proc, even when every child of the resident is another job's daemon or it has none."""
    s = Setup(tmp_path)
    a = s.orphan("a")
    leftover = s.world.fork(a.pid)  # carries the token, closed its lock descriptor
    s.adopt()

    def closed(lock: HeldLock) -> bool:
        lock.taken = True
        return True
    s.world.at(T0 + 1, lambda: setattr(s.locks["a"], "try_acquire", lambda: closed(s.locks["a"])))
    s.world.at(T0 + 2, lambda: s.world.exit(a.pid, 0))
    s.stop_all_at(T0 + 10)
    s.house.run()
    assert TERM in leftover.signals and leftover.pid in s.world.deaths
    [restarted] = [p for p in s.world.spawned if p.token == s.jobs["a"].lock_path]
    assert restarted.born >= s.world.deaths[leftover.pid], "restarted beside what was left of the adopted tree"


def test_stop_of_an_adopted_job_ends_its_tree_only(tmp_path: Any) -> None:
    s = Setup(tmp_path)
    a, b = s.orphan("a"), s.orphan("b")
    child = s.world.fork(a.pid)
    s.adopt()
    answers: list[bool] = []
    s.world.at(T0 + 2, lambda: s.house.stop_job("a", answers.append))
    left: dict[str, Any] = {}
    s.world.at(T0 + 5, lambda: left.update(members=sorted(s.house.members), watches=dict(s.world.exit_watches)))
    s.stop_all_at(T0 + 10)
    s.house.run()
    assert answers == [True]
    assert a.pid in s.world.deaths and child.pid in s.world.deaths
    assert s.world.deaths[a.pid] < T0 + 3
    assert left["members"] == ["b"] and list(left["watches"]) == [b.pid]
    assert s.births("a") == [] and s.births("b") == []
    assert s.state("a").phase == Phase.STOPPED and s.state("a").supervisor_pid is None


def test_an_adopted_job_whose_policy_is_never_is_not_restarted(tmp_path: Any) -> None:
    s = Setup(tmp_path)
    a = s.orphan("a", restart="never")
    s.adopt()
    s.world.at(T0 + 1, lambda: s.world.exit(a.pid, 0))
    s.house.run()  # its only job is done: the resident ends
    assert s.births("a") == []
    state = s.state("a")
    assert state.phase == Phase.EXITED and state.last_exit_code == UNKNOWN_EXIT
    assert s.house.members == {}


def test_only_orphans_are_adopted(tmp_path: Any) -> None:
    s = Setup(tmp_path)
    s.orphan("orphan")
    s.orphan("periodic", periodic=True, every=60.0)  # its run ends on its own; the next tick starts it again
    gone = s.orphan("gone")
    s.world.exit(gone.pid, 0)  # nothing runs: its lock is free, a tick starts it
    supervised = s.orphan("supervised", supervisor=SUPERVISOR)  # a live supervisor (here: a tick)
    s.store.save(RunState.from_dict({**s.state("supervised").to_dict(), "supervisor_start": 1}))
    s.orphan("plain")
    s.jobs["plain"].shared = False  # reinstalled without --shared
    s.orphan("leased")
    s.jobs["leased"].cluster = "postgresql://db/ws"  # its lease is its cluster house's: never adopted
    assert [job.name for job, _ in orphans(s.house, s.root)] == ["orphan"]
    assert s.adopt() == ["orphan"]
    assert supervised.pid in s.world.procs and s.world.exit_watches.keys() == {s.daemons["orphan"].pid}
    s.stop_all_at(T0 + 5)
    s.house.run()


def test_a_daemon_that_ends_as_it_is_adopted_is_restarted(tmp_path: Any) -> None:
    """Gone between the look at the state files and the exit watch: no watch can be had (the
    pidfd's ESRCH); it is taken as ended at once."""
    s = Setup(tmp_path)
    a = s.orphan("a")
    watch = s.world.watch_exit

    def late(pid: int, on_exit: Any) -> Any:
        s.world.exit(pid, 0)
        return watch(pid, on_exit)
    s.house.seams.watch_exit = late
    assert s.adopt() == ["a"]
    s.stop_all_at(T0 + 5)
    s.house.run()
    assert a.pid in s.world.deaths and s.births("a") == [0.0]
