"""The task farm on PostgreSQL in a shared world: a `farm_tasks` table another role made (or may
write) is refused and none of its rows run, and the farm's connection has the cluster lease's
timeouts, so a statement stuck behind a lock (or a dead network) fails instead of hanging."""

from __future__ import annotations

import importlib.util
import os
import threading
from typing import Any

import pytest
from conftest import TEST_USER, Sandbox, wait_for
from test_farm import farm, write_list

if importlib.util.find_spec("pgkit") is None or importlib.util.find_spec("psycopg") is None:
    pytest.skip("needs tests/kits/pgkit.py (the pg_cluster fixture) and psycopg", allow_module_level=True)
pytest_plugins = ["pgkit"]


@pytest.fixture
def fresh_table(pg_cluster: Any) -> Any:
    pg_cluster.psql("DROP TABLE IF EXISTS farm_tasks", dbname=TEST_USER)
    yield pg_cluster
    pg_cluster.psql("DROP TABLE IF EXISTS farm_tasks", dbname=TEST_USER)


@pytest.mark.parametrize("plant", ["owner", "grant"])
def test_a_farm_table_another_role_owns_or_may_write_is_refused_and_none_of_its_rows_run(
        sandbox: Sandbox, fresh_table: Any, plant: str) -> None:
    from watchdog_singleton.farm.store.postgres import SQL

    schema = SQL["schema"]

    pwned = sandbox.path("PWNED")
    role = f"ws_planter_{sandbox.tag}"
    fresh_table.psql(f"CREATE ROLE {role}", dbname=TEST_USER)
    try:
        # Made first in a schema the victim's search_path reaches (public, before PostgreSQL 15 open to all).
        fresh_table.psql(schema + f"INSERT INTO farm_tasks (id, line, command) VALUES ('p-0', 1, 'id > {pwned}');"
                         + (f"ALTER TABLE farm_tasks OWNER TO {role};" if plant == "owner"
                            else f'ALTER TABLE farm_tasks OWNER TO "{TEST_USER}";')
                         + "GRANT ALL ON farm_tasks TO PUBLIC;", dbname=TEST_USER)
        listing = write_list(sandbox, ["echo mine >> out"])
        proc = farm(sandbox, listing, "--db", str(fresh_table))
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.splitlines()
        assert len(lines) == 1 and "farm_tasks" in lines[0], proc.stderr
        assert (f"belongs to role {role}" if plant == "owner" else "can be written by other roles") in lines[0]
        assert not os.path.exists(pwned) and not os.path.exists(sandbox.path("out"))
        assert fresh_table.psql("SELECT state FROM farm_tasks", dbname=TEST_USER).split() == ["todo"]
    finally:
        fresh_table.psql(f"DROP TABLE IF EXISTS farm_tasks; DROP ROLE {role}", dbname=TEST_USER)


def test_a_farm_statement_stuck_behind_a_lock_fails_within_the_attempt_bound(fresh_table: Any) -> None:
    import psycopg

    from watchdog_singleton.farm.store import StoreError
    from watchdog_singleton.farm.store.postgres import PgStore
    from watchdog_singleton.farm.tasklist import Task

    store = PgStore(fresh_table.url_with_passfile, lease=12)  # one round trip: at most 1 s
    locker = psycopg.connect(fresh_table.url_with_passfile)
    outcome: list[Any] = []

    def claim() -> None:
        try:
            outcome.append(store.claim("h/x/1/n", lease=12, limit=1))
        except StoreError as exc:
            outcome.append(exc)
    try:
        # The cluster lease's keepalives and user timeout, from the same routine.
        params = store.conn.info.get_parameters()
        assert (params.get("keepalives_idle"), params.get("keepalives_count"), params.get("tcp_user_timeout")) \
            == ("1", "3", "1000"), params
        store.add([Task("t-0", 1, "true")])
        locker.execute("LOCK TABLE farm_tasks IN ACCESS EXCLUSIVE MODE")  # held: locker is in a transaction
        worker = threading.Thread(target=claim, daemon=True)
        worker.start()
        wait_for(lambda: outcome, 10, what="the claim to give up")
        (error,) = outcome
        assert isinstance(error, StoreError) and error.exit_code == 74 and "statement timeout" in str(error)
        assert "\n" not in str(error)
        locker.rollback()
        (again,) = store.claim("h/x/1/n", lease=12, limit=1)  # the next call opens a new connection
        assert again.id == "t-0"
    finally:
        locker.rollback()
        locker.close()
        store.close()
