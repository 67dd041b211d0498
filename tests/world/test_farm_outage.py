"""A farm whose database stops answering for a while (a PostgreSQL restart, a failover, a network
blip) in the fake world (fakefarm.py): the real loop of farm/workers.py, its store made to fail
as PostgreSQL's does (a transient StoreError) between two simulated seconds. Shorter than the
bound: the tasks run on, nothing is claimed, one line each way, then everything is recorded;
past the give-up deadline the tasks stop and run again after; past the bound (the lease) the farm
ends 74; a permanent refusal ends it at once."""

from __future__ import annotations

import math
import re
import signal
from typing import Any, Callable

import pytest
from fakefarm import FarmWorld
from fakeworld import KILL, TERM, FakeProc

from watchdog_singleton.errors import REQUEUE, STORAGE_FAILED
from watchdog_singleton.farm.store import Claim, StoreError
from watchdog_singleton.timefmt import clock_time

T0 = 1000.0
WHERE = "database postgresql://me@db/farm"
METHODS = ("add", "claim", "heartbeat", "holding", "finish", "fail", "release", "sweep", "stats", "rows")


def near(when: float, within: float = 0.1) -> Any:
    return pytest.approx(when, abs=within)


class Outage:
    """The world's store refuses every call from `start` to `end` (simulated seconds) the way an
    unreachable PostgreSQL does; `calls` are the names of the calls it refused."""

    def __init__(self, world: FarmWorld, start: float, end: float = math.inf,
                 error: Callable[[], StoreError] = lambda: StoreError(
                     f"farm {WHERE}: connection refused", transient=True, where=WHERE, reason="connection refused")
                 ) -> None:
        self.world, self.start, self.end, self.error = world, start, end, error
        self.calls: list[tuple[float, str]] = []
        store = world.store
        assert store is not None
        for name in METHODS:
            setattr(store, name, self._guard(name, getattr(store, name)))

    def _guard(self, name: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any) -> Any:
            if self.start <= self.world.now < self.end:
                self.calls.append((self.world.now, name))
                raise self.error()
            return real(*args)
        return call

    def lift(self) -> None:
        self.end = self.world.now


def runs_for(world: FarmWorld, seconds: dict[str, list[float]]) -> None:
    """Each task (by its command) exits 0 after its seconds, one entry per attempt; inf: runs on."""
    def start(task: FakeProc) -> None:
        left = seconds[task.argv[-1]]
        run = left.pop(0) if len(left) > 1 else left[0]
        if math.isfinite(run):
            world.after(run, lambda: world.exit(task.pid, 0))
    world.on_spawn = start


def by_command(world: FarmWorld) -> dict[str, list[FakeProc]]:
    found: dict[str, list[FakeProc]] = {}
    for task in world.spawned:
        found.setdefault(task.argv[-1], []).append(task)
    return found


def rows(world: FarmWorld) -> dict[str, tuple[str, int]]:
    assert world.store is not None
    return {r.command: (r.state, r.attempts) for r in world.store.rows()}


def said(world: FarmWorld, pattern: str) -> list[str]:
    return [w for w in world.warnings if re.search(pattern, w)]


def test_an_outage_shorter_than_the_lease_is_ridden_out_tasks_run_on_nothing_is_claimed_and_all_is_recorded(
        tmp_path: Any) -> None:
    world = FarmWorld()
    runs_for(world, {"a": [30], "b": [40], "c": [10]})
    farm = world.farm(tmp_path, ["a", "b", "c"], workers=2, lease=60, grace=10)
    outage = Outage(world, T0 + 15, T0 + 35)
    assert farm.run() == 0
    tasks = by_command(world)
    assert {cmd: len(t) for cmd, t in tasks.items()} == {"a": 1, "b": 1, "c": 1}  # each ran once
    a, b, c = tasks["a"][0], tasks["b"][0], tasks["c"][0]
    assert a.signals == [] and b.signals == []  # ran on through the outage
    assert world.deaths[a.pid] == near(T0 + 30) and world.deaths[b.pid] == near(T0 + 40)
    # a's slot was free from T0 + 30, but nothing is claimed until the database answers (a probe
    # every 2 s from the failed heartbeat at T0 + 20: T0 + 36 is the first after T0 + 35).
    assert c.born == near(T0 + 36)
    assert rows(world) == {"a": ("finished", 1), "b": ("finished", 1), "c": ("finished", 1)}
    # One line when it began, one when it ended; meanwhile one call every 2 s: the heartbeat, and
    # once a's end is kept (T0 + 30), the heartbeat's first step: recording it.
    (began,) = said(world, "unreachable")
    assert began == (f"farm: {WHERE}: unreachable (connection refused); retrying every 2 s until "
                     f"{clock_time(T0 + 20 + 60)}, no new claims meanwhile; 2 task(s) run on until "
                     f"{clock_time(T0 + 55.01)}, the lease's give-up deadline")
    (ended,) = said(world, "answers again")
    assert ended == f"farm: {WHERE}: answers again after 16 s; 1 result(s) kept meanwhile recorded; the farm goes on"
    assert [name for _, name in outage.calls] == ["heartbeat"] * 5 + ["finish"] * 3  # T0 + 20, 22, ..., 34
    assert [when for when, _ in outage.calls] == [near(T0 + 20 + 2 * i) for i in range(8)]
    assert not said(world, "stopped")


def test_an_outage_past_the_give_up_deadline_stops_the_tasks_and_they_run_again_once_it_answers(
        tmp_path: Any) -> None:
    world = FarmWorld()
    runs_for(world, {"a": [math.inf, 5]})  # the first attempt runs on; the second takes 5 s
    farm = world.farm(tmp_path, ["a"], workers=1, lease=60, grace=10)
    Outage(world, T0 + 1, T0 + 70)  # from the heartbeat at T0 + 20 to T0 + 70: under the bound (T0 + 80)
    assert farm.run() == 0
    first, second = by_command(world)["a"]
    assert first.signals == [KILL] and world.deaths[first.pid] == near(T0 + 55.01)  # lease - margin
    assert second.born == near(T0 + 70, within=2.1)  # the next probe once it answers
    assert world.deaths[second.pid] == near(second.born + 5)
    assert rows(world) == {"a": ("finished", 2)}
    assert len(said(world, "could not renew its leases in time")) == 1
    assert len(said(world, "unreachable")) == 1 and len(said(world, "answers again")) == 1
    assert said(world, "answers again after 5[01] s; 1 result\\(s\\) kept meanwhile recorded")


def test_an_outage_longer_than_the_lease_ends_the_farm_with_exit_74_and_the_next_farm_runs_its_tasks(
        tmp_path: Any) -> None:
    world = FarmWorld()
    runs_for(world, {"a": [math.inf, 5]})
    farm = world.farm(tmp_path, ["a"], workers=1, lease=60, grace=10)
    outage = Outage(world, T0 + 1)  # never answers again
    assert farm.run() == STORAGE_FAILED
    first = by_command(world)["a"][0]
    assert first.signals == [KILL] and world.deaths[first.pid] == near(T0 + 55.01)
    assert world.now == near(T0 + 80, within=1.1)  # the bound: the lease, from the first failure at T0 + 20
    (line,) = said(world, "exit 74")
    assert line == (f"farm: stopped: farm {WHERE}: connection refused (no answer for 60 s, over the --lease "
                    "of 60 s); 1 task(s) left (1 whose end could not be recorded: they run again): fix that "
                    "and run the farm again (exit 74)")
    # The database answers again: a's row still names the dead farm, and the next farm takes it back.
    outage.lift()
    assert rows(world) == {"a": ("running", 1)}
    assert world.farm(tmp_path, ["a"], lease=60, grace=10).run() == 0
    assert len(by_command(world)["a"]) == 2 and rows(world) == {"a": ("finished", 2)}


def test_a_permanent_refusal_ends_the_farm_at_once_with_exit_74_and_no_retry(tmp_path: Any) -> None:
    world = FarmWorld()
    runs_for(world, {"a": [5], "b": [math.inf]})
    farm = world.farm(tmp_path, ["a", "b"], workers=2, lease=60, grace=10)
    refusal = Outage(world, T0 + 1, error=lambda: StoreError(
        f"farm {WHERE}: permission denied for table farm_tasks", where=WHERE,
        reason="permission denied for table farm_tasks"))
    assert farm.run() == STORAGE_FAILED
    b = by_command(world)["b"][0]
    # a's finish at T0 + 5 was refused: b is stopped as on SIGUSR1 at once (SIGTERM, then its grace).
    assert b.signals[0] == TERM and world.deaths[b.pid] == near(T0 + 5)
    assert not said(world, "unreachable") and not said(world, "answers again")
    assert "heartbeat" not in {name for _, name in refusal.calls}  # no probe: nothing is tried again later
    assert all(T0 + 5 <= when <= T0 + 6.1 for when, _ in refusal.calls) and world.now <= T0 + 6.1
    assert said(world, "permission denied for table farm_tasks.*2 whose end could not be recorded.*exit 74")


def test_a_stop_during_an_outage_ends_75_and_its_unrecorded_results_run_again(tmp_path: Any) -> None:
    world = FarmWorld()
    runs_for(world, {"a": [math.inf]})
    farm = world.farm(tmp_path, ["a"], lease=60, grace=10)
    Outage(world, T0 + 1)
    world.at(T0 + 30, lambda: farm.wakeups.caught(signal.SIGTERM))
    assert farm.run() == REQUEUE
    a = by_command(world)["a"][0]
    assert a.signals[0] == TERM and world.deaths[a.pid] == near(T0 + 30)
    assert said(world, f"stopped \\(SIGTERM received\\) while its {WHERE} does not answer \\(1 whose end "
                       "could not be recorded: they run again\\): run the farm again to continue \\(exit 75\\)")


def test_a_claim_whose_answer_was_lost_in_the_outage_is_given_back_and_runs_once(tmp_path: Any) -> None:
    world = FarmWorld()
    runs_for(world, {"a": [10], "b": [10]})
    farm = world.farm(tmp_path, ["a", "b"], workers=1, lease=60, grace=10)
    outage = Outage(world, T0 + 10.5, T0 + 15)
    store = world.store
    assert store is not None
    claim, lost = store.claim, list[Claim]()

    def commit_then_drop(*args: Any) -> Any:  # the server committed it; its answer never came back
        got = claim(*args)
        if got and world.now >= T0 + 10 and not lost:
            lost.extend(got)
            raise outage.error()
        return got
    store.claim = commit_then_drop  # type: ignore[method-assign,assignment]
    assert farm.run() == 0
    assert [c.command for c in lost] == ["b"]  # claimed at T0 + 10, when a's slot was free
    assert {cmd: len(t) for cmd, t in by_command(world).items()} == {"a": 1, "b": 1}
    b = by_command(world)["b"][0]
    assert b.born == near(T0 + 16)  # the first probe after T0 + 15: b given back, and claimed again
    assert rows(world) == {"a": ("finished", 1), "b": ("finished", 2)}  # the lost claim counts as an attempt
