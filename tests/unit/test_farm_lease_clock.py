"""The SQLite farm store keeps its leases on CLOCK_BOOTTIME, as the farm keeps its give-up deadline:
a step of the wall clock (NTP, a hand `date -s`) must not make a live farm's leases run out, or a
sweep (by another farm on the same database, or this one) hands a running task out a second time.
The wall clock still stamps `started` and `ended`, which people read."""

from __future__ import annotations

import os
import sqlite3
from typing import Callable

from watchdog_singleton.farm.store.sqlite import SqliteStore
from watchdog_singleton.farm.tasklist import Task

LEASE = 60.0


class Clocks:
    def __init__(self) -> None:
        self.boot = 1000.0  # CLOCK_BOOTTIME
        self.wall = 1_800_000_000.0  # time.time()
        self.boot_id = "boot-a"

    def store(self, path: str) -> SqliteStore:
        lease_clock: Callable[[], float] = lambda: self.boot  # noqa: E731
        return SqliteStore(path, clock=lease_clock, wall=lambda: self.wall, boot=lambda: self.boot_id)


def one_task(path: str, clocks: Clocks) -> SqliteStore:
    store = clocks.store(path)
    store.add([Task("t-0", 1, "true")])
    [claim] = store.claim("host/lock/1/a", LEASE, 1)
    assert claim.id == "t-0"
    return store


def test_a_wall_clock_step_forward_leaves_live_leases_alone(tmp_path: object) -> None:
    clocks = Clocks()
    store = one_task(os.path.join(str(tmp_path), "farm.sqlite"), clocks)
    clocks.wall += 3600  # NTP steps the clock an hour on; no time passed
    clocks.boot += 1
    assert store.sweep() == []  # the farm that holds it is alive and renews on time
    assert store.claim("host/lock/2/b", LEASE, 1) == []  # nothing to take: it runs once
    clocks.boot += LEASE + 1  # the lease really runs out
    assert store.sweep() == ["t-0"]


def test_the_wall_clock_stamps_started_and_ended(tmp_path: object) -> None:
    clocks = Clocks()
    store = one_task(os.path.join(str(tmp_path), "farm.sqlite"), clocks)
    [row] = store.rows()
    assert row.started == clocks.wall


def test_leases_of_an_earlier_boot_have_run_out(tmp_path: object) -> None:
    path = os.path.join(str(tmp_path), "farm.sqlite")
    clocks = Clocks()
    one_task(path, clocks).close()
    clocks.boot_id, clocks.boot = "boot-b", 5.0  # a reboot: every farm of that boot is dead
    store = clocks.store(path)
    assert store.sweep() == ["t-0"]
    [claim] = store.claim("host/lock/3/c", LEASE, 1)
    assert store.sweep() == []  # the new lease is on this boot's clock
    assert claim.gen == 2


def test_an_older_database_s_wall_clock_leases_keep_their_moment(tmp_path: object) -> None:
    path = os.path.join(str(tmp_path), "farm.sqlite")
    clocks = Clocks()
    one_task(path, clocks).close()
    db = sqlite3.connect(path)  # as an older version left it: no stamp, leases on the wall clock
    db.execute("DROP TABLE IF EXISTS meta")
    db.execute("UPDATE tasks SET lease_expires = ?", (clocks.wall + 30,))
    db.commit()
    db.close()
    store = clocks.store(path)
    assert store.sweep() == []  # 30 s are left of it
    clocks.boot += 31
    assert store.sweep() == ["t-0"]
