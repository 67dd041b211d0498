"""A job's own supervisor (not shared) that a tick started to adopt the daemon a SIGKILLed supervisor
left running (supervisor/adopt.py, wired by supervisor/resident.py's `adopting`), driven through the
fake world: the daemon is no child of ours, its end comes through the exit watch (a pidfd in the
real supervisor), and then the restart policy applies. No processes, no sleeps; simulated time."""

from __future__ import annotations

import os
from typing import Any, Optional

from fakeworld import SUPERVISOR, TERM, FakeProc, FakeWorld, births, log_of
from test_house_adopt import HeldLock

from watchdog_singleton.job.model import Job
from watchdog_singleton.proc.procs import UNKNOWN_EXIT
from watchdog_singleton.state.phases import Phase
from watchdog_singleton.state.store import CARRIED, RunState, StateStore
from watchdog_singleton.supervisor.adopt import orphan
from watchdog_singleton.supervisor.core import Supervisor
from watchdog_singleton.supervisor.resident import adopting
from watchdog_singleton.timefmt import iso, unix_time

T0 = 1000.0
DEAD = 3_999_999  # the killed supervisor: no process of the fake world


class Own:
    """One job whose supervisor was SIGKILLed, its daemon running on (init's now), and the new
    supervisor a tick made to adopt it, as resident.main makes it."""

    def __init__(self, tmp_path: Any, started_at: str = "2024-01-01T00:00:00Z", **options: Any) -> None:
        self.world = FakeWorld()
        logs = os.path.join(str(tmp_path), "logs")
        self.job = Job(name="j", command=["/bin/daemon"], workdir="/", lock_dir=os.path.join(str(tmp_path), "locks"),
                       stdout_log=os.path.join(logs, "j.out"), stderr_log=os.path.join(logs, "j.err"), **options)
        self.daemon = self.world.stray(self.job.lock_path, self.job.command)
        self.store = StateStore(os.path.join(str(tmp_path), "state"))
        self.old = RunState(name="j", phase=Phase.RUNNING, boot_id="fake-boot", supervisor_pid=DEAD,
                            supervisor_start=5, pid=self.daemon.pid, pid_start=self.world.start_time(self.daemon.pid),
                            started_at=started_at, command=self.job.command,
                            lock_path=self.job.lock_path, restarts=4)
        self.store.save(self.old)
        self.lock = HeldLock(self.world, self.job.lock_path)
        holder: list[Supervisor] = []
        held, seams, self.adopt = adopting(self.job, self.lock, {"adopt": self.old.to_dict()}, holder,
                                           self.world.seams())
        self.sup = Supervisor(self.job, held, self.store, seams=seams,
                              history={key: getattr(self.old, key) for key in CARRIED})
        holder.append(self.sup)

    def run(self, stop_at: Optional[float] = None) -> int:
        if stop_at is not None:
            self.world.at(stop_at, self.sup.request_stop)
        assert self.adopt is not None
        return self.sup.run(self.adopt)

    def state(self) -> RunState:
        state = self.store.load("j")
        assert state is not None
        return state

    def at(self, when: float, seen: dict[str, RunState]) -> None:
        self.world.at(when, lambda: seen.update({str(when): self.state()}))


def test_the_adopted_daemon_runs_on_under_the_new_supervisor(tmp_path: Any) -> None:
    s = Own(tmp_path)
    seen: dict[str, RunState] = {}
    s.at(T0 + 1, seen)
    s.run(stop_at=T0 + 5)
    state = seen[str(T0 + 1)]
    assert state.supervisor_pid == SUPERVISOR and state.pid == s.daemon.pid and state.phase == Phase.RUNNING
    assert state.restarts == 4 and state.house == ""
    assert "how the daemon ends will not be known" in state.message
    assert s.world.spawned == [], "the adopted daemon was started a second time"
    assert not s.lock.taken, "the daemon's lock was taken from it"
    log = log_of(s.sup)
    assert f"adopted running pid {s.daemon.pid}: its supervisor (pid {DEAD}) died" in log
    assert "not read: its stdout (no pipe of its supervisor's on record)" in log


def test_a_stop_ends_the_adopted_tree(tmp_path: Any) -> None:
    s = Own(tmp_path)
    child = s.world.fork(s.daemon.pid)  # a child of the daemon: no child of ours either
    s.run(stop_at=T0 + 2)
    assert s.daemon.signals == [TERM] and s.daemon.pid in s.world.deaths and child.pid in s.world.deaths
    assert s.world.deaths[s.daemon.pid] < T0 + 3
    state = s.state()
    assert state.phase == Phase.STOPPED and state.pid is None
    assert s.world.spawned == [] and s.world.exit_watches.get(s.daemon.pid) in (None, [])


def test_its_end_is_seen_at_once_and_it_is_started_again_with_its_lock(tmp_path: Any) -> None:
    s = Own(tmp_path)
    s.world.at(T0 + 3, lambda: s.world.exit(s.daemon.pid, -9))  # kill -9: init reaps it, not us
    seen: dict[str, RunState] = {}
    s.at(T0 + 4, seen)
    s.run(stop_at=T0 + 10)
    assert births(s.world) == [3.0], "the adopted daemon's end was not acted on at once"
    state = seen[str(T0 + 4)]
    assert state.last_exit_code == UNKNOWN_EXIT and state.restarts == 5
    assert state.pid == s.world.spawned[0].pid and state.phase == Phase.RUNNING
    assert s.lock.taken, "started again without its lock"
    assert "ended (how is unknown: it was adopted, not our child)" in log_of(s.sup)


def test_leftovers_holding_the_lock_are_stopped_before_the_restart(tmp_path: Any) -> None:
    s = Own(tmp_path)
    leftover: FakeProc = s.world.fork(s.daemon.pid)  # inherits the token and the lock
    s.world.at(T0 + 2, lambda: s.world.exit(s.daemon.pid, 0))
    s.run(stop_at=T0 + 10)
    assert TERM in leftover.signals and leftover.pid in s.world.deaths
    [restarted] = s.world.spawned
    assert s.world.tree_at_spawn[0] == [], "started again beside what was left of the adopted tree"
    assert restarted.born >= s.world.deaths[leftover.pid]


def test_an_adopted_job_whose_policy_is_never_is_not_started_again(tmp_path: Any) -> None:
    s = Own(tmp_path, restart="never")
    s.world.at(T0 + 1, lambda: s.world.exit(s.daemon.pid, 0))
    s.run()  # the daemon is done: the supervisor ends
    assert births(s.world) == []
    state = s.state()
    assert state.phase == Phase.EXITED and state.last_exit_code == UNKNOWN_EXIT


def test_a_daemon_that_ends_as_it_is_adopted_is_started_again(tmp_path: Any) -> None:
    """Gone between the tick's look at the run state and the exit watch: taken as ended at once."""
    s = Own(tmp_path)
    s.world.exit(s.daemon.pid, 0)
    s.run(stop_at=T0 + 5)
    assert births(s.world) == [0.0]


def test_only_a_dead_supervisors_running_daemon_is_adopted(tmp_path: Any) -> None:
    s = Own(tmp_path)
    alive = s.world.alive
    assert orphan(s.job, s.old, alive)
    live_supervisor = RunState.from_dict({**s.old.to_dict(), "supervisor_pid": SUPERVISOR, "supervisor_start": 1})
    assert not orphan(s.job, live_supervisor, alive)
    other_boot = RunState.from_dict({**s.old.to_dict(), "boot_id": "another-boot"})
    assert not orphan(s.job, other_boot, alive)  # a reboot: its pids are anyone's
    reused = RunState.from_dict({**s.old.to_dict(), "pid_start": 1})
    assert not orphan(s.job, reused, alive)  # the daemon's pid is another process's now
    assert not orphan(s.job, None, alive)
    for options in ({"periodic": True, "every": 60.0}, {"cluster": "postgresql://db/ws"}):
        job = Job.from_dict({**s.job.to_dict(), **options})
        assert not orphan(job, s.old, alive), options  # a periodic run ends on its own; a cluster
        # job's watcher stops its tree with its supervisor
    s.world.exit(s.daemon.pid, 0)
    assert not orphan(s.job, s.old, alive)  # nothing runs: its lock is free, the tick starts it


def test_an_adopted_daemons_max_lifetime_counts_from_its_own_start(tmp_path: Any) -> None:
    """Started 90 s before the adoption with --max-lifetime 100: it is restarted 10 s after, not
    100 s after (nor never, as before), and a quick-exit count sees a run of its true length."""
    s = Own(tmp_path, started_at=iso(T0 - 90), max_lifetime=100.0)  # the fake wall clock is at T0
    s.run(stop_at=T0 + 30)
    assert s.daemon.signals[:1] == [TERM], "its lifetime was not enforced after the adoption"
    assert T0 + 10 <= s.world.deaths[s.daemon.pid] < T0 + 12
    assert "--max-lifetime 100 s reached" in log_of(s.sup)
    assert len(s.world.spawned) == 1, "not started again after its lifetime"


def test_times_written_by_iso_read_back_in_any_zone(monkeypatch: Any) -> None:
    import time

    for zone in ("UTC", "Europe/Paris", "America/St_Johns", "Asia/Kolkata"):
        monkeypatch.setenv("TZ", zone)
        time.tzset()
        for t in (0, 951782400, 1709164800, 1796000000.7, 4102444800):
            assert unix_time(iso(t)) == int(t), (zone, iso(t))
    monkeypatch.undo()
    time.tzset()
    assert unix_time("2024-01-01T00:00:00Z") is None and unix_time("") is None
