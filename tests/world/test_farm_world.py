"""The farm's lifecycle in the fake world (fakefarm.py): the real loop of farm/workers.py on a real
SQLite store, its tasks fake processes on a simulated clock. Claims, a task timeout, a requeue on
SIGUSR1, a task that ends well during a stop, leftovers of a task's tree, and the lease: each edge
pinned to the simulated second, without root, namespaces or sleeps."""

from __future__ import annotations

import signal
from typing import Any

import pytest
from fakefarm import MARKER, FarmWorld
from fakeworld import CONT, KILL, TERM, FakeProc

from watchdog_singleton.errors import REQUEUE, SOME_FAILED, STORAGE_FAILED
from watchdog_singleton.farm.store import StoreError
from watchdog_singleton.farm.store.sqlite import SqliteStore

T0 = 1000.0  # the fake world's clock at the start (the farm's first sweep takes it 10 ms further)


def near(when: float) -> Any:
    return pytest.approx(when, abs=0.1)


def runs_for(world: FarmWorld, seconds: dict[str, float], code: int = 0) -> None:
    """Each task (by its command) exits `code` after its seconds; a command not listed runs on."""
    def start(task: FakeProc) -> None:
        if task.argv[-1] in seconds:
            world.after(seconds[task.argv[-1]], lambda: world.exit(task.pid, code))
    world.on_spawn = start


def states(world: FarmWorld) -> dict[str, str]:
    assert world.store is not None
    return {row.id: row.state for row in world.store.rows()}


def by_command(world: FarmWorld) -> dict[str, list[FakeProc]]:
    found: dict[str, list[FakeProc]] = {}
    for task in world.spawned:
        found.setdefault(task.argv[-1], []).append(task)
    return found


def test_free_slots_claim_in_list_order_and_a_freed_slot_claims_the_next_at_once(tmp_path: Any) -> None:
    world = FarmWorld()
    runs_for(world, {"a": 10, "b": 20, "c": 5})
    farm = world.farm(tmp_path, ["a", "b", "c"], workers=2)
    assert farm.run() == 0
    started = {cmd: [t.born for t in tasks] for cmd, tasks in by_command(world).items()}
    assert started == {"a": [near(T0)], "b": [near(T0)], "c": [near(T0 + 10)]}  # c the moment a's slot was free
    assert world.now == near(T0 + 20)
    assert set(states(world).values()) == {"finished"}


def test_a_task_timeout_stops_the_whole_tree_and_fails_the_task(tmp_path: Any) -> None:
    world = FarmWorld()
    children: list[FakeProc] = []

    def start(task: FakeProc) -> None:
        child = world.fork(task.pid)  # forked and stubborn: SIGKILL after the grace
        child.ignores_term = True
        children.append(child)
    world.on_spawn = start
    farm = world.farm(tmp_path, ["hang"], task_timeout=30, grace=10)
    assert farm.run() == SOME_FAILED
    task = world.spawned[0]
    assert world.deaths[task.pid] == near(T0 + 30)
    assert children[0].signals[:2] == [TERM, CONT] and children[0].signals[-1] == KILL
    assert world.deaths[children[0].pid] == near(T0 + 40)
    assert list(states(world).values()) == ["failed"]


def test_sigusr1_stops_the_running_tasks_and_puts_them_back_to_todo_exit_75(tmp_path: Any) -> None:
    world = FarmWorld()
    farm = world.farm(tmp_path, ["a", "b", "c"], workers=2, grace=10)
    world.at(T0 + 5, lambda: farm.wakeups.caught(signal.SIGUSR1))
    assert farm.run() == REQUEUE
    assert sorted(by_command(world)) == ["a", "b"]  # c was never started
    assert all(world.deaths[t.pid] == near(T0 + 5) and t.signals[0] == TERM for t in world.spawned)
    assert set(states(world).values()) == {"todo"}
    assert any("SIGUSR1 received" in w for w in world.warnings)


def test_a_task_that_exits_0_during_a_stop_is_counted_finished_not_requeued(tmp_path: Any) -> None:
    world = FarmWorld()

    def start(task: FakeProc) -> None:
        if task.argv[-1] == "tidy":  # ends well 2 s after its SIGTERM
            task.on_term = lambda: world.after(2, lambda: world.exit(task.pid, 0))
    world.on_spawn = start
    farm = world.farm(tmp_path, ["tidy", "rough"], workers=2, grace=10)
    world.at(T0 + 5, lambda: farm.wakeups.caught(signal.SIGUSR1))
    assert farm.run() == REQUEUE
    tidy = by_command(world)["tidy"][0]
    assert world.deaths[tidy.pid] == near(T0 + 7)
    assert world.store is not None
    assert {r.command: r.state for r in world.store.rows()} == {"tidy": "finished", "rough": "todo"}


def test_what_a_finished_task_left_running_is_stopped_when_the_farm_ends(tmp_path: Any) -> None:
    world = FarmWorld()
    left: list[FakeProc] = []

    def start(task: FakeProc) -> None:
        left.append(world.fork(task.pid))  # a background child, with the task's marker
        world.after(1, lambda: world.exit(task.pid, 0))
    world.on_spawn = start
    farm = world.farm(tmp_path, ["a"], grace=10)
    assert farm.run() == 0
    assert left[0].signals[0] == TERM and left[0].pid not in world.procs
    assert world.nursery is not None and world.nursery.closed
    assert list(states(world).values()) == ["finished"]


def test_what_a_dead_farm_of_this_folder_left_is_stopped_before_any_task_starts(tmp_path: Any) -> None:
    world = FarmWorld()
    orphan = FakeProc(next(world.next_pid), 1, f"{MARKER}deadbeef#1#1", ["old"], world.now)
    world.procs[orphan.pid] = orphan
    stranger = FakeProc(next(world.next_pid), 1, "/tmp/ws-fake/other.lock#1#1", ["other"], world.now)
    world.procs[stranger.pid] = stranger
    runs_for(world, {"a": 1})
    farm = world.farm(tmp_path, ["a"])
    assert farm.run() == 0
    assert orphan.signals[0] == TERM and world.deaths[orphan.pid] <= world.spawned[0].born
    assert stranger.signals == []  # another folder's farm is not ours to stop


def test_a_farm_paused_past_its_give_up_deadline_kills_its_tasks_at_once_and_runs_them_again(
        tmp_path: Any) -> None:
    world = FarmWorld()
    runs_for(world, {})  # nothing ends on its own
    farm = world.farm(tmp_path, ["a"], lease=60, grace=10, timeout=200)

    def pause() -> None:
        world.now += 100  # SIGSTOP, a swap storm: past lease - margin (55 s) without a heartbeat
    world.at(T0 + 10, pause)
    assert farm.run() == REQUEUE  # --timeout ends it
    first, second = by_command(world)["a"][:2]
    assert first.signals == [KILL]  # no SIGTERM and no grace: the lease may be another farm's already
    assert world.deaths[first.pid] == near(T0 + 110)
    assert second.born == near(T0 + 110)  # back to todo, and claimed again
    assert any("could not renew its leases in time" in w for w in world.warnings)


def test_a_task_whose_lease_another_farm_took_is_killed_at_the_next_heartbeat(tmp_path: Any) -> None:
    world = FarmWorld()
    runs_for(world, {"a": 30, "b": 50})
    farm = world.farm(tmp_path, ["a", "b"], workers=2, lease=60, grace=10)

    def take_a() -> None:
        assert isinstance(world.store, SqliteStore)
        world.store.db.execute("UPDATE tasks SET holder = 'elsewhere/x/1/n', gen = gen + 1 WHERE command = 'a'")
    world.at(T0 + 5, take_a)
    assert farm.run() == 0  # a runs again once the other farm's lease ran out
    a, b = by_command(world)["a"][0], by_command(world)["b"][0]
    assert a.signals == [KILL] and world.deaths[a.pid] == near(T0 + 20)  # the heartbeat: lease / 3
    assert b.signals == [] and world.deaths[b.pid] == near(T0 + 50)
    assert any("another farm took over the lease" in w for w in world.warnings)


@pytest.mark.parametrize("refusal", [
    "farm database /w/farm.sqlite: database is locked (someone holds a lock on it or its -wal/-shm for over 10 s)",
    "farm database postgresql://me@db/farm: permission denied for table farm_tasks",
])
def test_a_heartbeat_the_database_refuses_for_good_stops_the_farm_at_once_with_exit_74_and_its_tasks_back_to_todo(
        tmp_path: Any, refusal: str) -> None:
    # Not transient (a lock SQLite already waited 10 s for, a permission): no outage to ride out
    # (tests/world/test_farm_outage.py), the farm stops at the first refusal.
    world = FarmWorld()
    farm = world.farm(tmp_path, ["a"], lease=60, grace=10)
    assert world.store is not None

    def refuse(holder: str, lease: float) -> int:
        raise StoreError(refusal)
    world.at(T0 + 1, lambda: setattr(world.store, "heartbeat", refuse))
    assert farm.run() == STORAGE_FAILED
    task = world.spawned[0]
    # The heartbeat at lease / 3 failed; the loop's next turn (within a second) stops the task.
    assert task.signals[0] == TERM and T0 + 20 < world.deaths[task.pid] <= T0 + 21.1
    assert list(states(world).values()) == ["todo"]
    assert not any("unreachable" in w for w in world.warnings)
    assert any(refusal in w and "exit 74" in w for w in world.warnings)
