"""The cluster house (install --shared for cluster jobs) driven through the fake world: its beats to
the watcher above it, against each job's lease on a fake database on the same clock. The beats go
through the real pipe and are read by the watcher's own `Watch`; a frozen house is handed to the
real `Watcher`. Every time below is simulated."""

from __future__ import annotations

import os
import threading
from typing import Any, Callable, Optional

import pytest
from fakeworld import KILL, SUPERVISOR, TERM, FakeDatabase, FakeLock, FakeProc, FakeWorld

from watchdog_singleton.cluster import KILL_LANDS, Grant, Timing
from watchdog_singleton.cluster.watcher import Watch, Watcher, beat
from watchdog_singleton.envvars import FENCING_TOKEN_ENV
from watchdog_singleton.job.model import Job
from watchdog_singleton.proc import procs
from watchdog_singleton.state.store import StateStore
from watchdog_singleton.supervisor.house import SIGTERM, House
from watchdog_singleton.supervisor.housecluster import ClusterDuty, beat_of, head_for

T0 = 1000.0
LEASE = 12.0  # renew every 2 s, give up 8 s after a renew's send, one round trip 1 s: room 2 s
TIMING = Timing.for_lease(LEASE)
WATCHER = SUPERVISOR - 1


class Setup:
    """A cluster house in the fake world; each job's lease on a database of its own, so that one
    can fail alone. Every beat goes through a real pipe into the watcher's `Watch`."""

    def __init__(self, tmp_path: Any, beside: bool = False) -> None:
        self.dir = str(tmp_path)
        self.world = FakeWorld()
        self.dbs: dict[str, FakeDatabase] = {}
        self.jobs: dict[str, Job] = {}
        self.behaviour: dict[str, Callable[[FakeProc], None]] = {}
        self.watch = Watch()
        self.beats: list[tuple[float, float, float]] = []  # (sent at, W, g)
        self.r, self.w = os.pipe()
        self.house = House(StateStore(os.path.join(self.dir, "state")), seams=self.world.seams(),
                           socket_path="/fake/.house-cluster.sock")
        self.house.duty = ClusterDuty(self.house.members, send=self._send, clock=lambda: self.world.now,
                                      engine=self._engine, beside=beside)
        self.house.open()
        self.world.on_spawn = self._on_spawn

    def close(self) -> None:
        os.close(self.r)
        os.close(self.w)

    def _send(self, deadline: float, grace: float) -> None:
        self.beats.append((self.world.now, deadline, grace))
        beat(self.w, deadline, grace)
        self.watch.feed(os.read(self.r, 4096))

    def _engine(self, job: Job) -> Any:
        return self.dbs[job.name].host("a", job.lease)

    def _on_spawn(self, proc: FakeProc) -> None:
        for name, job in self.jobs.items():
            if proc.token == job.lock_path and name in self.behaviour:
                self.behaviour[name](proc)

    def take(self, name: str, lease: float = LEASE, **options: Any) -> Job:
        logs = os.path.join(self.dir, "logs")
        job = Job(name=name, command=["/bin/daemon", name], workdir="/", lock_dir=os.path.join(self.dir, "locks"),
                  stdout_log=os.path.join(logs, f"{name}.out"), stderr_log=os.path.join(logs, f"{name}.err"),
                  cluster="postgresql://u@db/ws", lease=lease, shared=True, **options)
        self.jobs[name] = job
        self.dbs[name] = FakeDatabase(self.world)
        self.house.take(job, FakeLock(job.lock_path))
        return job

    def daemons(self, name: str) -> list[FakeProc]:
        return [p for p in self.world.spawned if p.token == self.jobs[name].lock_path]

    def expiry(self, name: str) -> Optional[float]:
        row = self.dbs[name].leases.get(name)
        return row["expires"] if row is not None and row["expires"] > self.world.now else None

    def run_until(self, when: float) -> None:
        """Drive the loop turn by turn (no stop at the end: the house just stops answering)."""
        while self.world.now < when:
            self.house._turn()

    def stop_all(self) -> None:
        self.house.wakeups.signals.append(SIGTERM)
        self.house.run()


def watched(s: Setup, every: float = 0.05) -> list[tuple[float, dict[str, Optional[float]], float, float]]:
    """Samples (now, each job's expiry on the database, the watcher's W and g) every `every` s."""
    samples: list[tuple[float, dict[str, Optional[float]], float, float]] = []

    def sample() -> None:
        samples.append((s.world.now, {n: s.expiry(n) for n in s.jobs}, s.watch.deadline, s.watch.grace or 0.0))
        s.world.after(every, sample)
    s.world.at(T0, sample)
    return samples


def in_time(deadline: float, grace: float, expiry: float, timing: Timing) -> bool:
    """A watcher starting at `deadline` with `grace` ends the tree before `expiry` less one round
    trip (the stop budget's margin, cluster.Timing.stop_budget)."""
    return deadline + grace + KILL_LANDS <= expiry - timing.attempt + 1e-6


def test_shared_cluster_jobs_hold_their_leases_and_the_beat_covers_each(tmp_path: Any) -> None:
    s = Setup(tmp_path)
    try:
        s.take("a", grace=30.0)
        s.take("b", lease=30.0, grace=5.0)  # another lease: its deadlines come later, its grace is longer
        samples = watched(s)
        s.run_until(T0 + 40)
        assert [s.world.envs[i][FENCING_TOKEN_ENV] for i in range(2)] == ["1", "1"]
        assert len(s.daemons("a")) == len(s.daemons("b")) == 1
        for now, expiries, deadline, grace in samples:
            assert deadline > now, f"at {now - T0:.2f} the watcher would stop every tree of a well house"
            for name, expiry in expiries.items():
                assert expiry is not None, f"{name} lost its lease at {now - T0:.2f}"
                assert in_time(deadline, grace, expiry, Timing.for_lease(s.jobs[name].lease)), (name, now - T0)
        # The beat is a's deadline (the earlier) plus the head start, with a's capped grace less it.
        g_a = s.dbs["a"].leases["a"]["expires"] - LEASE + TIMING.renew_deadline
        assert s.watch.deadline == pytest.approx(g_a + head_for(TIMING))
        assert s.watch.grace == pytest.approx(TIMING.capped_grace(30.0) - head_for(TIMING))
    finally:
        s.stop_all()
        s.close()
    assert all(s.expiry(n) is None for n in s.jobs), "a lease was not given back at the stop"


def test_one_jobs_database_outage_stops_its_tree_alone_and_the_watcher_stays_quiet(tmp_path: Any) -> None:
    """The house gives up on `a` at its deadline, tells the watcher before the head start ends, and
    stops a's tree itself; b's daemon never gets a signal."""
    s = Setup(tmp_path)
    try:
        s.take("a", grace=30.0)
        s.take("b")
        s.behaviour["a"] = lambda proc: setattr(proc, "ignores_term", True)  # the whole grace, then SIGKILL
        samples = watched(s)
        last_renew: list[float] = []

        def outage() -> None:
            s.dbs["a"].reachable = False
            last_renew.append(s.dbs["a"].leases["a"]["expires"])
        s.world.at(T0 + 10.3, outage)
        s.run_until(T0 + 30)
        [a] = s.daemons("a")
        [b] = s.daemons("b")
        assert a.signals[0] == TERM and a.signals[-1] == KILL
        # before the lease could pass (SIGKILL within the budget; the stop's rescans take a few simulated ms)
        assert s.world.deaths[a.pid] <= last_renew[0] - TIMING.attempt - KILL_LANDS + 0.05
        assert b.signals == [] and b.pid in s.world.procs
        for now, _expiries, deadline, _grace in samples:
            assert deadline > now, f"at {now - T0:.2f} the watcher would have stopped b's tree too"
        with open(s.jobs["a"].stderr_log) as f:
            assert "lost the cluster lease of a" in f.read()
    finally:
        s.stop_all()
        s.close()


def frozen_watcher(s: Setup) -> tuple[Watcher, list[tuple[int, int]]]:
    """The real watcher above a house that stopped answering (SIGSTOP): no beat comes any more."""
    sent: list[tuple[int, int]] = []

    def scan() -> dict[int, procs.Proc]:
        table = s.world.scan()
        table[WATCHER] = procs.Proc(WATCHER, 1, 1, "S", 0, None)
        if not s.watch.hung_up:
            table[SUPERVISOR] = procs.Proc(SUPERVISOR, WATCHER, 1, "T", 0, None)
        return table

    def send(pid: int, sig: int) -> None:
        sent.append((pid, sig))
        s.world.send(pid, sig)

    def read(timeout: Optional[float]) -> Optional[bytes]:
        if not any(p.ppid == SUPERVISOR for p in s.world.procs.values()) and s.watch.acted_on is not None:
            return b""  # the test's end: every tree is gone (then the house is killed)
        assert timeout is not None, "the watcher would wait for ever"
        s.world.now += timeout
        return None

    exited: dict[int, int] = {}

    def reap() -> None:
        if s.watch.hung_up:
            exited.setdefault(SUPERVISOR, -KILL)

    watcher = Watcher(SUPERVISOR, read, "", 99.0, lambda text: None, me=WATCHER, clock=lambda: s.world.now,
                      scan=scan, send=send, sleep=s.world.sleep, reap=reap, exited=exited)
    watcher.watch = s.watch  # what the beats said until the house froze
    return watcher, sent


def test_a_frozen_house_lets_its_watcher_stop_every_tree_before_any_lease_can_pass(tmp_path: Any) -> None:
    s = Setup(tmp_path)
    try:
        s.take("a", grace=30.0)
        s.take("b", lease=30.0, grace=30.0)
        for name in ("a", "b"):
            s.behaviour[name] = lambda proc: setattr(proc, "ignores_term", True)
        s.run_until(T0 + 9.1)  # then SIGSTOP: no renew, no beat
        expiries = {n: s.dbs[n].leases[n]["expires"] for n in s.jobs}
        frozen_at = s.world.now
        watcher, sent = frozen_watcher(s)
        watcher.run()
        for name in ("a", "b"):
            [daemon] = s.daemons(name)
            timing = Timing.for_lease(s.jobs[name].lease)
            died = s.world.deaths[daemon.pid]
            assert died > frozen_at
            # SIGKILL by the budget's end (the stop's rescans take a few simulated ms), then a second for the kernel
            assert died + KILL_LANDS <= expiries[name] - timing.attempt + 0.05, f"{name} outlived its lease's budget"
        assert all(pid != SUPERVISOR for pid, _ in sent), "the watcher signalled the house"
        assert (s.daemons("a")[0].pid, TERM) in sent  # a grace first, then SIGKILL
    finally:
        s.house.wakeups.signals.append(SIGTERM)
        s.house.run()
        s.close()


def test_the_beat_arithmetic_keeps_every_job_within_its_budget() -> None:
    """W + g never passes any job's last SIGKILL moment, in both lines; nothing held, nothing due."""
    short, long = Timing.for_lease(6.0), Timing.for_lease(60.0)
    short, long = (Timing(t.lease, t.renew_deadline, t.retry, t.attempt, head_for(t)) for t in (short, long))
    jobs = [(short, 104.0, True, True, 30.0), (long, 130.0, True, True, 10.0)]
    deadline, grace, switch = beat_of(100.0, jobs)
    assert (deadline, switch) == (104.0 + short.head, 104.0)
    assert grace == short.capped_grace(30.0)
    # Past the short job's deadline: it is stopped by the house; the watcher waits until its last moment.
    deadline, grace, switch = beat_of(104.0, jobs)
    assert deadline == 104.0 + short.stop_budget() - KILL_LANDS and grace == 0.0 and switch == 130.0
    for now in (100.0, 104.0):
        deadline, grace, _ = beat_of(now, jobs)
        for timing, give_up, *_ in jobs:
            assert deadline + grace <= give_up + timing.stop_budget() - KILL_LANDS
    assert beat_of(100.0, [(short, 0.0, False, False, 5.0)])[0] == float("inf")  # a standby: nothing to guard


def test_a_hung_acquire_of_one_job_never_holds_up_another_jobs_restarts(tmp_path: Any) -> None:
    """The gate's round trips run beside the loop: while a's database hangs, b restarts on time."""
    s = Setup(tmp_path, beside=True)
    release = threading.Event()
    asked = threading.Event()
    try:
        s.take("b", min_uptime=0.1)
        s.house.members["b"].sup.guard.beside = False  # type: ignore[union-attr]  # b's answers: in simulated time
        s.behaviour["b"] = lambda proc: s.world.after(1.0, lambda: s.world.exit(proc.pid, 0))
        job = s.take("a")
        engine = s.house.members["a"].sup.guard.cluster  # type: ignore[union-attr]
        plain = engine.acquire

        def hung(name: str) -> Optional[Grant]:
            asked.set()
            release.wait(30)
            return plain(name)
        engine.acquire = hung  # type: ignore[method-assign]
        s.house._turn()
        assert asked.wait(10)  # a's acquire hangs in its thread from now on
        s.run_until(T0 + 8)
        assert s.daemons("a") == []
        assert [round(p.born - T0) for p in s.daemons("b")][:8] == list(range(8)), "b's restarts waited for a"
        assert job.name in s.house.members
    finally:
        release.set()
        s.stop_all()
        s.close()
