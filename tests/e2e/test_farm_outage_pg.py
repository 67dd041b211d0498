"""A farm on a real PostgreSQL rides out the server's restart: the throwaway server
(tests/kits/pgkit.py) is stopped (`pg_ctl stop -m fast`, as its owner) while tasks run, held down
a few seconds and started again; the farm says so in one line each way, keeps what it could not
record, and ends 0 with every task finished exactly once. The rules, edge by edge, are
tests/world/test_farm_outage.py's."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from typing import Any, Iterator

import pytest
from conftest import TEST_USER, Sandbox, holds_for, wait_for
from test_farm import out_lines, write_list

if importlib.util.find_spec("pgkit") is None or importlib.util.find_spec("psycopg") is None:
    pytest.skip("needs tests/kits/pgkit.py (the pg_cluster fixture) and psycopg", allow_module_level=True)
pytest_plugins = ["pgkit"]


@pytest.fixture
def fresh_table(pg_cluster: Any) -> Iterator[Any]:
    pg_cluster.psql("DROP TABLE IF EXISTS farm_tasks", dbname=TEST_USER)
    yield pg_cluster
    pg_cluster.psql("DROP TABLE IF EXISTS farm_tasks", dbname=TEST_USER)


def test_a_farm_rides_out_a_postgresql_restart_and_finishes_every_task_exactly_once(
        sandbox: Sandbox, fresh_table: Any) -> None:
    names = [f"t{i}" for i in range(9)]
    listing = write_list(sandbox, [f"sleep 1.5; echo {n} >> out" for n in names])
    err_path = sandbox.path("farm.err")
    # A lease of 30 s: the tasks may run on for 25 s without a renewal; the farm gives up after 30.
    with open(err_path, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "watchdog_singleton", "farm", listing, "--db", str(fresh_table),
                                 "--workers", "3", "--lease", "30", "--progress-every", "3600"],
                                env=sandbox.env(), cwd=sandbox.dir, stdout=subprocess.DEVNULL, stderr=err,
                                **sandbox.user.popen_kwargs())

    def said() -> str:
        with open(err_path) as f:
            return f.read()
    down = False
    try:
        wait_for(lambda: out_lines(sandbox), 30, what="the first task to finish")
        fresh_table.stop("fast")  # the second batch runs, and ends while the server is down
        down = True
        wait_for(lambda: "unreachable" in said() or proc.poll() is not None, 15, what="the farm to see the outage")
        assert holds_for(lambda: proc.poll() is None, 3), said()  # down for 3 s more: the farm waits it out
        fresh_table.start()
        down = False
        proc.wait(timeout=60)
    finally:
        if down:
            fresh_table.start()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lines = said().splitlines()
    assert proc.returncode == 0, lines
    assert sorted(out_lines(sandbox)) == names  # each task's line once: none ran twice, none is missing
    assert len([x for x in lines if "unreachable" in x and "retrying every 2 s" in x]) == 1, lines
    assert len([x for x in lines if "answers again after" in x]) == 1, lines
    finished = fresh_table.psql("SELECT state, attempts, count(*) FROM farm_tasks GROUP BY 1, 2", dbname=TEST_USER)
    assert finished.split() == ["finished|1|9"]  # recorded once each, after one attempt each
