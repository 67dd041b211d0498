"""The cluster house renews all its jobs' grants on one database in one round trip (cluster/renewer.py),
over one connection (FakeLink: what postgres.PostgresLink does), in the fake world: a row that does
not come back is lost for its job alone, a database error is a retry for every job until each one's
own deadline, and every deadline counts from the send time of the statement that renewed it.
Every time below is simulated; the processes are in tests/e2e/test_house_cluster_link_e2e.py."""

from __future__ import annotations

import os
from typing import Any, Optional

import pytest
from fakeworld import TERM, FakeDatabase, FakeLink, FakeLock, FakeProc, FakeWorld

from watchdog_singleton.cluster import Grant, LeaseUnavailable, Timing
from watchdog_singleton.cluster.keeper import LeaseKeeper
from watchdog_singleton.cluster.renewer import Renewer
from watchdog_singleton.cluster.watcher import Watch, beat
from watchdog_singleton.job.model import Job
from watchdog_singleton.state.store import StateStore
from watchdog_singleton.supervisor.house import SIGTERM, House
from watchdog_singleton.supervisor.housecluster import ClusterDuty

T0 = 1000.0
LEASE = 12.0  # renew every 2 s, give up 8 s after a renew's send, one round trip 1 s
TIMING = Timing.for_lease(LEASE)


class Setup:
    """A cluster house in the fake world whose jobs all lease on ONE database over one link, as
    the house's default engine (ClusterDuty.shared_engine) has them; the beats go to a real Watch."""

    def __init__(self, tmp_path: Any) -> None:
        self.dir = str(tmp_path)
        self.world = FakeWorld()
        self.db = FakeDatabase(self.world)
        self.link = self.db.link("a")
        self.jobs: dict[str, Job] = {}
        self.watch = Watch()
        self.r, self.w = os.pipe()
        self.house = House(StateStore(os.path.join(self.dir, "state")), seams=self.world.seams(),
                           socket_path="/fake/.house-cluster.sock")
        self.house.duty = ClusterDuty(self.house.members, send=self._send, clock=lambda: self.world.now,
                                      engine=lambda job: self.link.lease_for(Timing.for_lease(job.lease)),
                                      beside=False)
        self.house.open()

    def _send(self, deadline: float, grace: float) -> None:
        beat(self.w, deadline, grace)
        self.watch.feed(os.read(self.r, 4096))

    def take(self, name: str, lease: float = LEASE, **options: Any) -> Job:
        logs = os.path.join(self.dir, "logs")
        job = Job(name=name, command=["/bin/daemon", name], workdir="/", lock_dir=os.path.join(self.dir, "locks"),
                  stdout_log=os.path.join(logs, f"{name}.out"), stderr_log=os.path.join(logs, f"{name}.err"),
                  cluster="postgresql://u@db/ws", lease=lease, shared=True, **options)
        self.jobs[name] = job
        self.house.take(job, FakeLock(job.lock_path))
        return job

    def daemons(self, name: str) -> list[FakeProc]:
        return [p for p in self.world.spawned if p.token == self.jobs[name].lock_path]

    def expiry(self, name: str) -> Optional[float]:
        row = self.db.leases.get(name)
        return row["expires"] if row is not None and row["expires"] > self.world.now else None

    def keeper(self, name: str) -> LeaseKeeper:
        guard = self.house.members[name].sup.guard
        assert guard is not None
        return guard.keeper

    def run_until(self, when: float) -> None:
        while self.world.now < when:
            self.house._turn()

    def close(self) -> None:
        self.house.wakeups.signals.append(SIGTERM)
        self.house.run()
        os.close(self.r)
        os.close(self.w)


def per_job_renews(db: FakeDatabase) -> list[tuple[str, str]]:
    return [call for call in db.calls if call[1] == "renew"]


def test_shared_cluster_jobs_on_one_database_renew_together_in_one_round_trip(tmp_path: Any) -> None:
    s = Setup(tmp_path)
    try:
        for name in ("a", "b", "c"):
            s.take(name)
        s.take("d", lease=30.0)  # a longer lease: renewed with the others, early (always safe)
        s.run_until(T0 + 40)
        assert all(len(s.daemons(n)) == 1 for n in s.jobs), "a daemon was restarted"
        assert all(s.expiry(n) is not None for n in s.jobs)
        assert per_job_renews(s.db) == [], "a grant was renewed on its own"
        assert s.link.rounds, "no renew at all"
        assert all(sorted(r) == ["a", "b", "c", "d"] for r in s.link.rounds[1:]), s.link.rounds
        # One round trip per retry of the shortest lease (2 s), not one per job: 40 s, about 20.
        assert 18 <= len(s.link.rounds) <= 21, len(s.link.rounds)
        # Each job's expiry is its own lease past the last round trip (d's 30 s, the others' 12).
        assert s.expiry("a") == s.expiry("b") == s.expiry("c")
        assert s.expiry("d") == pytest.approx((s.expiry("a") or 0.0) - LEASE + 30.0)
        # The watcher's deadline: the earliest give-up (all the same: one send time) plus the head.
        keeper = s.keeper("a")
        assert s.watch.deadline == pytest.approx(keeper.give_up_at + keeper.timing.head)
    finally:
        s.close()
    assert all(s.expiry(n) is None for n in s.jobs), "a lease was not given back at the stop"


def test_a_row_that_does_not_come_back_is_lost_for_its_job_alone(tmp_path: Any) -> None:
    s = Setup(tmp_path)
    try:
        s.take("a")
        s.take("b")

        def taken_over() -> None:  # another host took a's row (say, after a clock jump on the database)
            row = s.db.leases["a"]
            s.db.leases["a"] = {"holder": "z:boot:1:1", "generation": row["generation"] + 1, "expires": T0 + 1000}
        s.world.at(T0 + 5.5, taken_over)
        s.run_until(T0 + 20)
        [a] = s.daemons("a")
        [b] = s.daemons("b")
        assert a.signals[:1] == [TERM] and s.world.deaths[a.pid] < T0 + 8.5, "a's tree outlived its lost row"
        assert b.signals == [] and b.pid in s.world.procs
        expiry = s.expiry("b")
        assert expiry is not None and expiry > s.world.now + LEASE - TIMING.retry - 0.01
        assert all("b" in r for r in s.link.rounds)
        with open(s.jobs["a"].stderr_log) as f:
            assert "lost the cluster lease of a" in f.read()
    finally:
        s.close()


def test_a_database_error_is_a_retry_for_every_job_until_each_ones_own_deadline(tmp_path: Any) -> None:
    """Unreachable from 10.3 s to 18.5 s: a (lease 12, give-up 8 s after its last good send at 10 s)
    stops its tree at 18 s; b (lease 30, give-up 20 s) rides it out and is renewed again, the same
    token, its daemon never signalled."""
    s = Setup(tmp_path)
    try:
        s.take("a", grace=30.0)
        s.take("b", lease=30.0)
        s.world.at(T0 + 10.3, lambda: setattr(s.db, "reachable", False))
        s.world.at(T0 + 18.5, lambda: setattr(s.db, "reachable", True))
        s.run_until(T0 + 30)
        [a] = s.daemons("a")
        [b] = s.daemons("b")
        assert a.signals[:1] == [TERM]
        sent = T0 + 10.0  # the last round trip that succeeded before the outage
        assert s.world.deaths[a.pid] <= sent + TIMING.renew_deadline + TIMING.stop_budget() - 1.0 + 0.05
        assert s.world.deaths[a.pid] >= sent + TIMING.renew_deadline
        assert b.signals == [] and b.pid in s.world.procs
        assert s.db.leases["b"]["generation"] == 1 and s.expiry("b") is not None
        failed = [c for c in s.db.calls if c[1] == "renew_all"]
        assert len(failed) >= 10
    finally:
        s.close()


class SlowLink:
    """A SharedLink whose round trip takes `took` seconds of the clock and answers as told."""

    def __init__(self, clock: list[float], took: float) -> None:
        self.clock, self.took = clock, took
        self.lost: set[str] = set()
        self.down = False
        self.asked: list[list[str]] = []

    def lease_for(self, timing: Timing) -> Any:
        raise NotImplementedError

    def renew_all(self, asks: list[tuple[Grant, float]], attempt: float) -> dict[str, Grant]:
        self.asked.append([g.name for g, _ in asks])
        self.clock[0] += self.took
        if self.down:
            raise LeaseUnavailable("cluster database postgresql://u@db/ws: server closed the connection")
        return {g.name: g for g, _ in asks if g.name not in self.lost}

    def drop(self) -> None:
        pass


def held_keeper(name: str, clock: list[float], timing: Timing = TIMING) -> LeaseKeeper:
    keeper = LeaseKeeper(None, name, timing, clock=lambda: clock[0])  # type: ignore[arg-type]
    keeper._granted(Grant(name, "h:boot:1:1", 7, ""), clock[0])
    return keeper


def test_each_deadline_counts_from_the_send_time_and_each_verdict_is_its_own() -> None:
    clock = [100.0]
    link = SlowLink(clock, took=0.7)
    told: list[float] = []
    renewer = Renewer(link, clock=lambda: clock[0], threaded=False, told=lambda: told.append(clock[0]))
    woken: list[str] = []
    a, b, c = (held_keeper(n, clock) for n in "abc")
    c_timing = Timing.for_lease(30.0)
    c = held_keeper("c", clock, c_timing)
    for keeper in (a, b, c):
        renewer.add(keeper, lambda name=keeper.name: woken.append(name))  # type: ignore[misc]
    clock[0] = 101.0
    renewer.tick()
    assert link.asked == [], "renewed before any was due"
    clock[0] = 102.0  # a's and b's retry (2 s); c's is 5 s: renewed with them, early
    link.lost = {"b"}
    renewer.tick()
    assert link.asked == [["a", "b", "c"]]
    assert a.give_up_at == 102.0 + TIMING.renew_deadline, "not from the send time"
    assert c.give_up_at == 102.0 + c_timing.renew_deadline
    assert a.next_renew == 102.0 + TIMING.retry and not a.lost(clock[0])
    assert b.lost(clock[0]) and "lost" in b.problem and woken == ["b"]
    assert told == [102.7], "one beat for the round, after its answers"
    # An error: a retry for each, until each one's own deadline; nothing lost.
    renewer.remove(b)
    link.down = True
    woken.clear()
    clock[0] = 104.0
    renewer.tick()
    assert link.asked[-1] == ["a", "c"] and sorted(woken) == ["a", "c"]
    assert a.give_up_at == 102.0 + TIMING.renew_deadline and not a.lost(clock[0])
    assert a.next_renew == 104.0 + TIMING.retry and "server closed" in a.problem
    # Past a's deadline, c's still ahead: a is lost at the next round (without asking for it), c asked.
    clock[0] = 110.0
    woken.clear()
    renewer.tick()
    assert a.lost(clock[0]) and not c.lost(clock[0]) and woken[:1] == ["a"]
    assert link.asked[-1] == ["c"]


def test_an_answer_for_a_keeper_removed_during_the_round_trip_is_given_to_no_one() -> None:
    clock = [100.0]
    renewer: Renewer

    class Removing(SlowLink):
        def renew_all(self, asks: list[tuple[Grant, float]], attempt: float) -> dict[str, Grant]:
            renewer.remove(a)  # the job's run ended meanwhile: its grant was given back
            a.grant = None
            return super().renew_all(asks, attempt)

    link = Removing(clock, took=0.5)
    renewer = Renewer(link, clock=lambda: clock[0], threaded=False)
    a, b = held_keeper("a", clock), held_keeper("b", clock)
    renewer.add(a, lambda: None)
    renewer.add(b, lambda: None)
    clock[0] = 102.0
    renewer.tick()
    assert a.grant is None and a.give_up_at == 100.0 + TIMING.renew_deadline
    assert b.give_up_at == 102.0 + TIMING.renew_deadline


def test_the_house_opens_one_link_per_database_url(monkeypatch: pytest.MonkeyPatch) -> None:
    """ClusterDuty's own engines (no test engine): one link per URL, each job's engine over it."""
    opened: list[str] = []
    world = FakeWorld()
    dbs = {"postgresql://u@db1/ws": FakeDatabase(world), "postgresql://u@db2/ws": FakeDatabase(world)}

    def open_link(url: str, timing: Timing) -> FakeLink:
        opened.append(url)
        return dbs[url].link("h")

    duty = ClusterDuty({}, send=lambda deadline, grace: None, clock=lambda: world.now, beside=False)
    monkeypatch.setattr("watchdog_singleton.cluster.engines.open_link", open_link)
    made = [duty.cluster_for(Job(name=f"j{i}", command=["/bin/true"], workdir="/", cluster=url, lease=LEASE))
            for i, url in enumerate(list(dbs) * 3)]
    assert opened == list(dbs)
    assert len({id(e.link) for e in made}) == 2  # type: ignore[attr-defined]


def test_a_sync_job_leaves_the_round_trip_between_runs_and_a_daemon_stays_in_it(tmp_path: Any) -> None:
    """A --sync periodic job (every 10 s, runs 5 s) beside a daemon on the same link: each run's
    grant is renewed with the daemon's while it runs, given back after it, and never renewed
    after that; the daemon's grant is renewed through it all."""
    s = Setup(tmp_path)
    try:
        s.take("d")
        s.take("p", periodic=True, every=10.0, sync=True, restart="never")

        def runs_five_seconds(proc: FakeProc) -> None:
            if proc.token == s.jobs["p"].lock_path:
                s.world.after(5.0, lambda: s.world.exit(proc.pid, 0))
        s.world.on_spawn = runs_five_seconds
        s.run_until(T0 + 7)
        assert s.expiry("p") is None, "p's grant outlived its run"
        s.run_until(T0 + 34)
        assert [round(p.born - T0) for p in s.daemons("p")] == [0, 10, 20, 30]
        assert len(s.daemons("d")) == 1 and s.expiry("d") is not None
        assert per_job_renews(s.db) == []
        with_p = [r for r in s.link.rounds if "p" in r]
        assert with_p and all("d" in r for r in s.link.rounds)
        assert len(with_p) < len(s.link.rounds)  # p left the round trip between its runs
        assert s.db.slots["p"][1] == 4  # one slot per run
        assert s.expiry("p") is not None  # the fourth run holds it (T0+30 to T0+35)
    finally:
        s.close()


def test_the_renew_thread_renews_together_on_time_and_ends_with_its_last_grant() -> None:
    """The threaded Renewer on the real clock (a lease of 1.2 s: a renew every 0.2 s): one round
    trip for both grants each time, and no thread left once the last grant is removed."""
    from conftest import holds_for, wait_for

    from watchdog_singleton.cluster.keeper import boottime

    fast = Timing.for_lease(1.2)
    clock = [boottime()]

    class Live(SlowLink):
        def renew_all(self, asks: list[tuple[Grant, float]], attempt: float) -> dict[str, Grant]:
            self.clock[0] = boottime()
            return super().renew_all(asks, attempt)

    link = Live(clock, took=0.0)
    renewer = Renewer(link, clock=boottime, threaded=True)
    a, b = held_keeper("a", clock, fast), held_keeper("b", clock, fast)
    for keeper in (a, b):
        keeper.clock = boottime
        renewer.add(keeper, lambda: None)
    wait_for(lambda: len(link.asked) >= 3, 5, what="three renews")
    assert all(sorted(names) == ["a", "b"] for names in link.asked)
    assert a.give_up_at > boottime() and not a.lost(boottime()) and not b.lost(boottime())
    renewer.remove(a)
    renewer.remove(b)
    wait_for(lambda: not renewer.running, 5, what="the renew thread's end")
    asked = len(link.asked)
    assert holds_for(lambda: len(link.asked) == asked, 3 * fast.retry), "renewed after the last grant left"
