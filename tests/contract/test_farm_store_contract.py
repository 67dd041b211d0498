"""One state machine, two engines: the farm's store contract, run against SQLite and PostgreSQL.

farm/store/sqlite.py (SQLite) and farm/store/postgres.py (PostgreSQL) implement the same rules in two SQL
dialects: todo -> running (a lease, a generation) -> finished | failed, back to todo on a retry,
a release or a lease that ran out. Every case below runs on both; an engine that answers one
differently is the bug. PostgreSQL comes from tests/kits/pgkit.py's throwaway server (skipped where
pgkit or psycopg is missing); lease times are the engine's own clock, so a lease that must run
out is given 0.3 s and waited for.
"""

from __future__ import annotations

import importlib.util
from typing import Any, Iterator

import pytest
from conftest import TEST_USER, wait_for

from watchdog_singleton.farm.store import LOST_LIMIT, Store
from watchdog_singleton.farm.store.sqlite import SqliteStore
from watchdog_singleton.farm.tasklist import Task

HAVE_PG = importlib.util.find_spec("pgkit") is not None and importlib.util.find_spec("psycopg") is not None
pytest_plugins = ["pgkit"] if HAVE_PG else []

SHORT = 0.3  # a lease meant to run out
LONG = 300.0  # a lease that will not run out during a test


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Store]:
    made: Store
    if request.param == "sqlite":
        made = SqliteStore(str(tmp_path / "farm.sqlite"))
    else:
        if not HAVE_PG:
            pytest.skip("needs tests/kits/pgkit.py (the pg_cluster fixture) and psycopg")
        from watchdog_singleton.farm.store.postgres import PgStore

        cluster = request.getfixturevalue("pg_cluster")
        cluster.psql("DROP TABLE IF EXISTS farm_tasks", dbname=TEST_USER)
        made = PgStore(cluster.url_with_passfile)
    try:
        yield made
    finally:
        made.close()


def tasks(n: int, start: int = 0) -> list[Task]:
    return [Task(f"t-{i}", i + 1, f"echo {i}") for i in range(start, start + n)]


def states(store: Store) -> dict[str, str]:
    return {r.id: r.state for r in store.rows()}


def test_add_counts_new_tasks_only_and_keeps_the_list_order(store: Store) -> None:
    assert store.add(tasks(3)) == 3
    assert store.add(tasks(4)) == 1  # t-0..t-2 are there already: only t-3 is new
    assert store.add([]) == 0
    rows = store.rows()
    assert [(r.id, r.line, r.command, r.state, r.attempts, r.failures) for r in rows] == [
        (f"t-{i}", i + 1, f"echo {i}", "todo", 0, 0) for i in range(4)]
    assert all(r.holder is None and r.code is None and r.started is None for r in rows)
    assert store.stats() == {"todo": 4, "running": 0, "finished": 0, "failed": 0}


def test_claim_takes_todo_tasks_in_list_order_up_to_the_limit_and_never_twice(store: Store) -> None:
    store.add(tasks(5))
    first = store.claim("host/1/a", LONG, 2)
    assert [(c.id, c.command, c.gen, c.attempt) for c in first] == [("t-0", "echo 0", 1, 1), ("t-1", "echo 1", 1, 1)]
    second = store.claim("host/2/b", LONG, 10)
    assert [c.id for c in second] == ["t-2", "t-3", "t-4"]
    assert store.claim("host/3/c", LONG, 10) == []  # never two holders at once
    assert store.stats() == {"todo": 0, "running": 5, "finished": 0, "failed": 0}
    held = {r.id: r.holder for r in store.rows()}
    assert held == {"t-0": "host/1/a", "t-1": "host/1/a", "t-2": "host/2/b", "t-3": "host/2/b", "t-4": "host/2/b"}
    assert all(r.started is not None for r in store.rows())


def test_holding_names_a_holders_running_tasks_with_their_generation(store: Store) -> None:
    store.add(tasks(3))
    mine = store.claim("host/1/a", LONG, 2)
    store.claim("host/2/b", LONG, 1)
    assert store.holding("host/1/a") == {("t-0", 1), ("t-1", 1)}
    store.finish(mine[0], 0)
    assert store.holding("host/1/a") == {("t-1", 1)}
    assert store.holding("host/9/z") == set()


def test_heartbeat_renews_only_the_holders_own_leases(store: Store) -> None:
    store.add(tasks(2))
    (kept,) = store.claim("host/1/a", SHORT, 1)
    store.claim("host/2/b", SHORT, 1)
    assert store.heartbeat("host/1/a", LONG) == 1
    assert store.heartbeat("host/9/z", LONG) == 0  # no task of its own
    wait_for(lambda: store.sweep() == ["t-1"], 10, what="the unrenewed lease to run out")
    assert store.holding("host/1/a") == {(kept.id, kept.gen)}  # the renewed one still runs
    assert states(store) == {"t-0": "running", "t-1": "todo"}
    assert store.heartbeat("host/2/b", LONG) == 0  # its lease is gone: nothing to renew


def test_finish_records_the_code_once_and_a_finished_task_never_runs_again(store: Store) -> None:
    store.add(tasks(1))
    (claim,) = store.claim("host/1/a", LONG, 1)
    assert store.finish(claim, 0)
    assert not store.finish(claim, 0)  # a second record of the same attempt changes nothing
    (row,) = store.rows()
    assert (row.state, row.code, row.holder, row.attempts) == ("finished", 0, None, 1)
    assert row.ended is not None
    assert store.claim("host/1/a", LONG, 5) == []
    assert store.retry() == 0  # retry touches failed tasks only
    assert store.stats() == {"todo": 0, "running": 0, "finished": 1, "failed": 0}


def test_fail_goes_back_to_todo_while_retries_are_left_then_stays_failed(store: Store) -> None:
    store.add(tasks(1))
    (one,) = store.claim("host/1/a", LONG, 1)
    assert store.fail(one, 3, retries=1) == "todo"
    (two,) = store.claim("host/1/a", LONG, 1)
    assert (two.attempt, two.gen) == (2, 2)
    assert store.fail(two, 4, retries=1) == "failed"
    assert store.fail(two, 4, retries=1) == ""  # no longer running under that claim
    (row,) = store.rows()
    assert (row.state, row.failures, row.attempts, row.code, row.holder) == ("failed", 2, 2, 4, None)
    assert store.claim("host/1/a", LONG, 1) == []
    assert store.stats() == {"todo": 0, "running": 0, "finished": 0, "failed": 1}


def test_retry_puts_failed_tasks_back_with_their_failures_forgotten(store: Store) -> None:
    store.add(tasks(3))
    for claim in store.claim("host/1/a", LONG, 3):
        if claim.id == "t-2":
            store.finish(claim, 0)
        else:
            store.fail(claim, 1, retries=0)
    assert states(store) == {"t-0": "failed", "t-1": "failed", "t-2": "finished"}
    assert store.retry(["t-1", "t-2", "nope"]) == 1  # only a failed task named
    assert states(store) == {"t-0": "failed", "t-1": "todo", "t-2": "finished"}
    assert store.retry() == 1  # every failed task
    assert [r.failures for r in store.rows()] == [0, 0, 0]
    (again,) = store.claim("host/1/a", LONG, 1)
    assert (again.id, again.attempt) == ("t-0", 2)
    assert store.fail(again, 1, retries=0) == "failed"  # failures were reset: no retry left at 0


def test_release_returns_the_task_without_counting_a_failure(store: Store) -> None:
    store.add(tasks(1))
    (claim,) = store.claim("host/1/a", LONG, 1)
    assert store.release(claim)
    assert not store.release(claim)
    (row,) = store.rows()
    assert (row.state, row.failures, row.attempts, row.holder) == ("todo", 0, 1, None)
    (again,) = store.claim("host/2/b", LONG, 1)
    assert (again.attempt, again.gen) == (2, 2)


def test_sweep_returns_tasks_whose_lease_ran_out_and_leaves_the_others(store: Store) -> None:
    store.add(tasks(2))
    store.claim("host/1/a", SHORT, 1)
    store.claim("host/2/b", LONG, 1)
    wait_for(lambda: store.sweep() == ["t-0"], 10, what="the short lease to run out")
    assert states(store) == {"t-0": "todo", "t-1": "running"}
    (row, _) = store.rows()
    assert (row.failures, row.holder, row.code) == (0, None, None)  # lost, not failed
    assert row.ended is not None


def test_sweep_by_holder_prefix_takes_dead_farms_of_this_host_but_not_the_live_one(store: Store) -> None:
    store.add(tasks(3))
    store.claim("host/lock/111/old", LONG, 1)
    store.claim("host/lock/222/me", LONG, 1)
    store.claim("other/lock/333/x", LONG, 1)
    assert store.sweep("host/lock/", alive="host/lock/222/me") == ["t-0"]
    assert states(store) == {"t-0": "todo", "t-1": "running", "t-2": "running"}
    assert store.sweep() == []  # the other leases still run


def test_a_task_lost_more_than_the_lost_limit_fails_instead_of_going_back(store: Store) -> None:
    store.add(tasks(1))
    for lost in range(LOST_LIMIT + 1):
        (claim,) = store.claim(f"host/lock/{lost}/old", LONG, 1)
        assert claim.attempt == lost + 1
        assert store.sweep("host/lock/", alive="host/lock/none") == ["t-0"]
        assert states(store)["t-0"] == ("failed" if lost == LOST_LIMIT else "todo")
    assert store.claim("host/lock/9/new", LONG, 1) == []
    (row,) = store.rows()
    assert row.failures == 0  # it never failed on its own: the node kept dying under it


def test_a_stale_claim_cannot_record_anything_after_the_task_was_claimed_again(store: Store) -> None:
    store.add(tasks(1))
    (stale,) = store.claim("host/1/a", SHORT, 1)
    wait_for(lambda: store.sweep() == ["t-0"], 10, what="the lease to run out")
    (fresh,) = store.claim("host/2/b", LONG, 1)
    assert (fresh.id, fresh.gen, fresh.attempt) == (stale.id, stale.gen + 1, 2)
    assert not store.finish(stale, 0)
    assert store.fail(stale, 1, retries=5) == ""
    assert not store.release(stale)
    assert store.holding("host/1/a") == set()
    (row,) = store.rows()
    assert (row.state, row.holder, row.failures) == ("running", "host/2/b", 0)  # untouched by the stale farm
    assert store.finish(fresh, 0)
    assert states(store) == {"t-0": "finished"}


def test_adopt_records_only_tasks_never_run_here(store: Store) -> None:
    store.add(tasks(4))
    (ran,) = store.claim("host/1/a", LONG, 1)
    store.finish(ran, 0)  # t-0 ran here: its own record stands
    assert store.adopt([("t-0", "failed"), ("t-1", "finished"), ("t-2", "failed"), ("nope", "finished"),
                        ("t-3", "running")]) == 2
    assert store.adopt([]) == 0
    rows = {r.id: (r.state, r.attempts) for r in store.rows()}
    assert rows == {"t-0": ("finished", 1), "t-1": ("finished", 0), "t-2": ("failed", 0), "t-3": ("todo", 0)}
    assert [c.id for c in store.claim("host/1/a", LONG, 5)] == ["t-3"]  # adopted never run
    assert store.retry(["t-2"]) == 1  # an imported failure can be retried like any other


def test_stats_counts_every_state_including_empty_ones(store: Store) -> None:
    assert store.stats() == {"todo": 0, "running": 0, "finished": 0, "failed": 0}
    assert store.rows() == []
    store.add(tasks(4))
    claims = store.claim("host/1/a", LONG, 3)
    store.finish(claims[0], 0)
    store.fail(claims[1], 1, retries=0)
    assert store.stats() == {"todo": 1, "running": 1, "finished": 1, "failed": 1}
