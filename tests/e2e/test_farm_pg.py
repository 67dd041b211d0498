"""The task farm on PostgreSQL: farms sharing one list through a real, throwaway server
(tests/kits/pgkit.py's `pg_cluster`; skipped where pgkit or psycopg is missing). The store's own
rules, on both engines, are tests/contract/test_farm_store_contract.py's."""

from __future__ import annotations

import importlib.util
import json
import os

import pytest
from conftest import Sandbox
from test_farm import farm, out_lines, start_farm, write_list

if importlib.util.find_spec("pgkit") is None or importlib.util.find_spec("psycopg") is None:
    pytest.skip("needs tests/kits/pgkit.py (the pg_cluster fixture) and psycopg", allow_module_level=True)
pytest_plugins = ["pgkit"]


def test_two_farms_share_one_postgresql_list_and_run_no_task_twice(sandbox: Sandbox, pg_cluster: str) -> None:
    url = str(pg_cluster)
    pg_cluster.psql("DROP TABLE IF EXISTS farm_tasks", dbname=pg_cluster.dbname)  # type: ignore[attr-defined]
    names = [f"p{i:03d}" for i in range(200)]
    listing = write_list(sandbox, [f"sleep 0.05; echo {n} >> out" for n in names])
    # Two farms, two work folders (each its own host lock), one list in the database.
    one = start_farm(sandbox, listing, "--db", url, "--workers", "4", "--workdir", sandbox.path("w1"), "--lease", "2")
    two = farm(sandbox, listing, "--db", url, "--workers", "4", "--workdir", sandbox.path("w2"), "--lease", "2")
    _, err = one.communicate(timeout=120)
    assert one.returncode == 0, err
    assert two.returncode == 0, two.stderr
    assert sorted(out_lines(sandbox)) == names  # none twice, none missing
    by_farm = [sum(1 for _ in open(sandbox.path(w, "timeline.jsonl"))) for w in ("w1", "w2")]
    assert sum(by_farm) == 200 and min(by_farm) > 0, by_farm  # both took part
    st = json.loads(farm(sandbox, "status", sandbox.path("w1"), "--db", url, "--json").stdout)
    assert st["counts"]["finished"] == 200
    for w in ("w1", "w2"):
        assert not os.path.exists(sandbox.path(w, "farm.sqlite"))
