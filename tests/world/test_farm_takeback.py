"""A farm that takes back the tasks of another farm whose lease ran out (killed on another node,
cut off) says so: those tasks run a second time, and the user must be able to tell why."""

from __future__ import annotations

from typing import Any

from fakefarm import FarmWorld

from watchdog_singleton.farm.store.sqlite import SqliteStore

T0 = 1000.0


def test_tasks_of_a_farm_whose_lease_ran_out_are_taken_back_and_said(tmp_path: Any) -> None:
    world = FarmWorld()

    def ends(task: Any) -> None:
        world.after(1, lambda: world.exit(task.pid, 0))
    world.on_spawn = ends
    farm = world.farm(tmp_path, ["a", "b"], workers=2, lease=60)
    assert isinstance(world.store, SqliteStore)
    # a farm on another node claimed b, then was killed: its lease runs out at T0 + 30
    world.store.db.execute("UPDATE tasks SET state = 'running', holder = 'elsewhere/farm-x.lock/7/n', "
                           "gen = 1, attempts = 1, lease_expires = ? WHERE command = 'b'", (T0 + 30,))
    assert farm.run() == 0
    b = [t for t in world.spawned if t.argv[-1] == "b"]
    assert len(b) == 1 and b[0].born > T0 + 30
    said = [w for w in world.warnings if "lease ran out" in w]
    assert said == ["farm: 1 task(s) whose lease ran out (their farm died or was cut off) went back to todo, "
                    "to run again"], world.warnings
