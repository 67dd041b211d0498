"""A cluster job's supervisor driven through its seams: the fake world's clock and processes,
and a fake lease database on the same clock (tests/kits/fakeworld.py). The real database, hosts and
faults are in test_lease.py and test_cluster_hosts.py; here every lifecycle edge of the lease is
pinned in simulated time: take, renew, lose, stop before the expiry, release, standby, sync,
rotation."""

from __future__ import annotations

import os
from typing import Any, Optional

from fakeworld import (
    CONT,
    KILL,
    SUPERVISOR,
    TERM,
    FakeDatabase,
    FakeLock,
    FakeProc,
    FakeWorld,
    births,
    exit_after,
    log_of,
)

from watchdog_singleton.cluster import Timing
from watchdog_singleton.cluster.watcher import Watcher
from watchdog_singleton.envvars import FENCING_TOKEN_ENV
from watchdog_singleton.job.model import Job
from watchdog_singleton.proc import procs
from watchdog_singleton.state.store import StateStore
from watchdog_singleton.supervisor.core import Supervisor

LEASE = 6.0  # renew every 1 s, give up after 4 s without a renew, stop budget 1.5 s
TIMING = Timing.for_lease(LEASE)
T0 = 1000.0


def cluster_supervisor(tmp_path: Any, world: FakeWorld, db: FakeDatabase, host: str = "a",
                       ready: Optional[list[Optional[str]]] = None, **options: Any) -> Supervisor:
    logs = os.path.join(str(tmp_path), "logs")
    job = Job(name="j", command=["/bin/daemon"], workdir="/", lock_dir=os.path.join(str(tmp_path), "locks"),
              stdout_log=os.path.join(logs, "j.out"), stderr_log=os.path.join(logs, "j.err"),
              cluster="postgresql://u@db/ws", lease=LEASE, **options)
    return Supervisor(job, FakeLock(), StateStore(os.path.join(str(tmp_path), "state")), seams=world.seams(),
                      ready=ready.append if ready is not None else None, cluster=db.host(host, LEASE))


def stop_at(world: FakeWorld, sup: Supervisor, when: float) -> None:
    world.at(when, sup.request_stop)


def test_the_holder_passes_its_token_renews_every_retry_and_releases_at_exit(tmp_path: Any) -> None:
    world = FakeWorld()
    db = FakeDatabase(world)
    db.leases["j"] = {"holder": "old:boot:1:1", "generation": 41, "expires": T0 - 1}  # an expired grant
    sup = cluster_supervisor(tmp_path, world, db)
    stop_at(world, sup, T0 + 30)
    sup.run()
    assert world.envs[0][FENCING_TOKEN_ENV] == "42"  # the next token, never reused
    renews = [what for host, what in db.calls if what == "renew"]
    assert 28 <= len(renews) <= 31  # one a second for 30 s
    assert db.leases["j"]["expires"] <= world.now  # released: a standby need not wait it out
    assert db.calls[-1] == ("a", "release")


def test_a_partitioned_holder_kills_its_tree_before_the_lease_can_pass(tmp_path: Any) -> None:
    world = FakeWorld()
    db = FakeDatabase(world)

    def stubborn(proc: FakeProc) -> None:
        proc.ignores_term = True  # the worst case: the whole grace, then SIGKILL
    world.on_spawn = stubborn
    sup = cluster_supervisor(tmp_path, world, db, grace=30.0)
    world.at(T0 + 10.5, lambda: setattr(db, "reachable", False))
    assert sup.run() == 1  # it left: the database is unreachable, so no new start
    daemon = world.spawned[0]
    expiry = db.leases["j"]["expires"]  # the database's expiry of the last renew that got through
    assert daemon.signals[0] == TERM and daemon.signals[-1] == KILL
    assert world.deaths[daemon.pid] < expiry  # dead before any other host could hold the lease
    assert world.deaths[daemon.pid] - T0 <= 10.5 + TIMING.renew_deadline + TIMING.capped_grace(30.0) + 0.01
    assert len(world.spawned) == 1
    log = log_of(sup)
    assert log.count("cannot reach cluster database") >= 1
    assert "lost the cluster lease of j" in log
    assert "SIGKILL" in log or "stopping the tree" in log


def test_a_lease_taken_by_another_host_stops_the_tree_at_the_next_renew(tmp_path: Any) -> None:
    world = FakeWorld()
    db = FakeDatabase(world)
    sup = cluster_supervisor(tmp_path, world, db)
    world.at(T0 + 5.2, lambda: db.leases["j"].update(holder="b:boot:1:1", generation=7, expires=T0 + 99))
    assert sup.run() == 0
    daemon = world.spawned[0]
    assert daemon.signals == [TERM]
    assert world.deaths[daemon.pid] <= T0 + 5.2 + TIMING.retry + 0.01
    assert "held by b" in log_of(sup)  # the restart asked again and found b holding it


def test_a_host_that_finds_the_lease_held_leaves_without_starting(tmp_path: Any) -> None:
    world = FakeWorld()
    db = FakeDatabase(world)
    db.host("b", LEASE).acquire("j")
    ready: list[Optional[str]] = []
    sup = cluster_supervisor(tmp_path, world, db, ready=ready)
    assert sup.run() == 0
    assert world.spawned == []
    assert ready == ["ok standby j not started here: held by b"]
    state = sup.store.load("j")
    assert state is not None and state.phase == "standby" and state.lease_holder == "b"
    assert [what for host, what in db.calls if host == "a"] == ["acquire"]  # one short query


def test_a_standby_takes_over_within_lease_plus_retry_of_the_holders_death(tmp_path: Any) -> None:
    world = FakeWorld()
    db = FakeDatabase(world)
    db.host("b", LEASE).acquire("j")  # b holds it, then dies: it never renews
    ready: list[Optional[str]] = []
    sup = cluster_supervisor(tmp_path, world, db, ready=ready, standby=True)
    stop_at(world, sup, T0 + 20)
    sup.run()
    assert ready == ["ok standby j: held by b: standing by"]
    assert len(world.spawned) == 1
    assert T0 + LEASE <= world.spawned[0].born <= T0 + LEASE + TIMING.retry
    assert world.envs[0][FENCING_TOKEN_ENV] == "2"
    asks = [what for host, what in db.calls if host == "a" and what == "acquire"]
    assert len(asks) <= LEASE / TIMING.retry + 2  # one short query per retry while b holds it


def test_an_unreachable_database_is_one_line_and_no_start(tmp_path: Any) -> None:
    world = FakeWorld()
    db = FakeDatabase(world)
    db.reachable = False
    sup = cluster_supervisor(tmp_path, world, db, standby=True)
    stop_at(world, sup, T0 + 30)
    assert sup.run() == 0
    assert world.spawned == []
    log = log_of(sup)
    assert log.count("cannot reach cluster database") == 1  # said once, not once per retry
    assert "Traceback" not in log
    state = sup.store.load("j")
    assert state is not None and "cannot reach cluster database" in state.lease_problem


def test_a_renew_problem_is_logged_once_and_its_end_too(tmp_path: Any) -> None:
    world = FakeWorld()
    db = FakeDatabase(world)
    sup = cluster_supervisor(tmp_path, world, db)
    world.at(T0 + 5.5, lambda: setattr(db, "reachable", False))
    world.at(T0 + 7.8, lambda: setattr(db, "reachable", True))  # back before the give-up (4 s)
    stop_at(world, sup, T0 + 15)
    sup.run()
    assert len(world.spawned) == 1  # never lost: one daemon all along
    log = log_of(sup)
    assert log.count("cluster lease: cannot reach") == 1
    assert log.count("cluster lease: renewed again") == 1


def test_sync_runs_at_most_once_per_period_across_hosts(tmp_path: Any) -> None:
    world = FakeWorld()
    db = FakeDatabase(world)
    exit_after(world, 1, 0)
    other = db.host("b", LEASE)
    claimed: list[Optional[int]] = []
    world.at(T0 + 19.5, lambda: claimed.append(other.claim_slot("j", 9.0)))  # b starts this period's run
    sup = cluster_supervisor(tmp_path, world, db, periodic=True, every=10.0, sync=True, restart="never")
    stop_at(world, sup, T0 + 45)
    sup.run()
    assert claimed == [3]  # b's run was the third of the cluster
    assert births(world) == [0, 10, 30, 40]  # due T0+20 skipped: b had started it
    assert "this period's run already started on another host" in log_of(sup)
    state = sup.store.load("j")
    assert state is not None and state.skipped == 1
    assert [entry["result"] for entry in state.history] == ["ok", "ok", "skipped", "ok", "ok"]
    assert db.leases["j"]["expires"] <= world.now  # the lease was held only for the runs


def test_rotation_passes_the_turn_and_waits_for_it_to_come_back(tmp_path: Any) -> None:
    world = FakeWorld()
    db = FakeDatabase(world)
    exit_after(world, 1, 0)
    other = db.host("b", LEASE)
    for t in range(0, 60, 2):
        world.at(T0 - 1 + t, lambda: other.heartbeat("j"))
    world.at(T0 + 12, lambda: None if other.pass_turn("j", 30.0) else None)  # b ran its turn: back to a
    sup = cluster_supervisor(tmp_path, world, db, periodic=True, every=10.0, rotate=True, restart="never")
    stop_at(world, sup, T0 + 25)
    sup.run()
    assert births(world) == [0, 20]
    log = log_of(sup)
    assert "the turn passes to b" in log
    assert "it is b's turn" in log


def test_a_sync_slot_that_could_not_be_claimed_leaves_no_lease_that_skips_the_next_claim(tmp_path: Any) -> None:
    world = FakeWorld()
    db = FakeDatabase(world)
    exit_after(world, 0.5, 0)
    db.fail_next.add("claim_slot")  # the lease is granted, then the connection drops
    sup = cluster_supervisor(tmp_path, world, db, periodic=True, every=2.0, sync=True, restart="never")
    stop_at(world, sup, T0 + 7)
    sup.run()
    claims = [what for _host, what in db.calls if what == "claim_slot"]
    assert births(world) == [2, 4, 6]  # the first due time could not claim its slot: no run
    assert len(claims) == 4  # every run claimed its slot first; none rode on a left-over lease


# -- the watcher (cluster/watcher.py): the supervisor's parent ------------------------------------------
WATCHER = SUPERVISOR - 1
TOKEN = "/locks/j.lock"


class BeatPipe:
    """The beat pipe as the watcher reads it: scripted (when, bytes) arrivals on the world's clock."""

    def __init__(self, world: FakeWorld, arrivals: list[tuple[float, bytes]]) -> None:
        self.world, self.arrivals = world, sorted(arrivals)

    def read(self, timeout: Optional[float]) -> Optional[bytes]:
        if self.arrivals and (timeout is None or self.arrivals[0][0] <= self.world.now + timeout):
            when, data = self.arrivals.pop(0)
            self.world.now = max(self.world.now, when)
            return data
        assert timeout is not None, "the watcher would wait for ever"
        self.world.now += timeout
        return None


def watched_tree(world: FakeWorld) -> dict[str, FakeProc]:
    """The daemon, its child, an orphan the supervisor adopted (setsid, `env -i`: no marker), and
    another job's process started from inside the daemon's tree."""
    def add(pid_parent: int, token: Optional[str]) -> FakeProc:
        proc = FakeProc(next(world.next_pid), pid_parent, token, ["/bin/x"], world.now)
        world.procs[proc.pid] = proc
        return proc
    daemon = add(SUPERVISOR, TOKEN)
    return {"daemon": daemon, "child": add(daemon.pid, TOKEN), "orphan": add(SUPERVISOR, None),
            "other job": add(daemon.pid, "/locks/other.lock")}


def watcher(world: FakeWorld, arrivals: list[tuple[float, bytes]], supervisor_dies_at: float,
            code: int = 0) -> tuple[Watcher, list[tuple[int, int]], list[str]]:
    sent: list[tuple[int, int]] = []
    notes: list[str] = []
    exited: dict[int, int] = {}

    def alive() -> bool:
        return world.now < supervisor_dies_at

    def scan() -> dict[int, procs.Proc]:
        table = world.scan()
        table[WATCHER] = procs.Proc(WATCHER, 1, 1, "S", 0, None)
        table[SUPERVISOR] = procs.Proc(SUPERVISOR, WATCHER, 1, "T", 0, TOKEN)
        if not alive():  # dead: what it had re-parents to the watcher, the next subreaper up
            del table[SUPERVISOR]
            for info in table.values():
                if info.ppid == SUPERVISOR:
                    info.ppid = WATCHER
        return table

    def send(pid: int, sig: int) -> None:
        sent.append((pid, sig))
        world.send(pid, sig)

    def reap() -> None:
        if not alive():
            exited.setdefault(SUPERVISOR, code)

    grace = TIMING.capped_grace(30.0)
    return (Watcher(SUPERVISOR, BeatPipe(world, arrivals).read, TOKEN, grace, notes.append, me=WATCHER,
                    clock=lambda: world.now, scan=scan, send=send, sleep=world.sleep, reap=reap, exited=exited),
            sent, notes)


def beat(deadline: float) -> bytes:
    return f"{deadline:.6f}\n".encode()


def test_the_watcher_stops_the_tree_of_a_stopped_supervisor_at_its_deadline_and_never_signals_it(
        tmp_path: Any) -> None:
    world = FakeWorld()
    tree = watched_tree(world)
    # A grant (give-up at +4), a renew a second later (+5), then nothing: the supervisor is stopped.
    # At +20 it is continued and holds a new grant; it exits at +22 (EOF).
    arrivals = [(T0, beat(T0 + 4)), (T0 + 1, beat(T0 + 5)), (T0 + 20, beat(T0 + 24)), (T0 + 22, b"")]
    watch, sent, notes = watcher(world, arrivals, supervisor_dies_at=T0 + 22)
    assert watch.run() == 0
    for role in ("daemon", "child", "orphan"):
        assert world.deaths[tree[role].pid] == T0 + 5, role  # the renew moved the deadline: not at +4
    assert "other job" in [role for role, proc in tree.items() if proc.pid in world.procs]
    assert all(pid != SUPERVISOR for pid, _sig in sent), "the watcher signalled the supervisor"
    assert {sig for _pid, sig in sent} == {TERM, CONT}
    assert len(notes) == 1 and "no renew of the cluster lease by its give-up deadline" in notes[0]
    assert "is stopped" in notes[0] and "stopping 3 process(es)" in notes[0]


def test_the_watcher_ends_the_tree_at_once_when_the_supervisor_dies_even_what_ignores_sigterm(
        tmp_path: Any) -> None:
    world = FakeWorld()
    tree = watched_tree(world)
    tree["daemon"].ignores_term = True
    arrivals = [(T0, beat(T0 + 4)), (T0 + 1, beat(T0 + 5)), (T0 + 2, b"")]  # SIGKILLed at +2
    watch, sent, notes = watcher(world, arrivals, supervisor_dies_at=T0 + 2, code=-KILL)
    assert watch.run() == 128 + KILL  # the supervisor's end, as a shell reports it
    grace = TIMING.capped_grace(30.0)
    assert world.deaths[tree["child"].pid] == world.deaths[tree["orphan"].pid] == T0 + 2
    assert T0 + 2 + grace <= world.deaths[tree["daemon"].pid] <= T0 + 2 + grace + 0.1
    assert world.deaths[tree["daemon"].pid] < T0 + 1 + LEASE  # long before the lease could pass
    assert (tree["daemon"].pid, KILL) in sent and tree["other job"].pid in world.procs
    assert "the supervisor (pid" in notes[0] and "was killed by SIGKILL" in notes[0]


def test_the_supervisor_tells_its_watcher_each_give_up_deadline_before_the_daemon_starts(tmp_path: Any) -> None:
    world = FakeWorld()
    db = FakeDatabase(world)
    sup = cluster_supervisor(tmp_path, world, db)
    assert sup.guard is not None
    deadlines: list[tuple[float, float]] = []  # (when told, deadline)
    sup.guard.keeper.on_deadline = lambda deadline: deadlines.append((world.now, deadline))
    world.at(T0 + 10.5, lambda: setattr(db, "reachable", False))
    sup.run()
    assert deadlines[0] == (T0, T0 + TIMING.renew_deadline)  # the grant, before the spawn
    assert world.spawned[0].born == T0
    told = [when for when, _ in deadlines]
    assert all(deadline == when + TIMING.renew_deadline for when, deadline in deadlines)  # from each renew's send
    assert told == sorted(told) and len(told) >= 10 and max(told) <= T0 + 10.5  # none once renews fail
