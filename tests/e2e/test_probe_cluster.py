"""Cluster jobs as a first real user meets them, on a real PostgreSQL (tests/kits/pgkit.py): a job
stopped on purpose is not flagged as a holder whose supervisor is gone."""

from __future__ import annotations

from typing import TYPE_CHECKING

from conftest import Sandbox, wait_for

if TYPE_CHECKING:
    from pgkit import PgCluster

pytest_plugins = ["pgkit"]


def test_a_stopped_cluster_job_is_not_a_holder_whose_supervisor_is_gone(
        sandbox: Sandbox, pg_cluster: PgCluster) -> None:
    name = sandbox.job("stopped")
    sandbox.ok("install", name, "--cluster", str(pg_cluster), "--lease", "6", "--", "/bin/sleep", "1000")
    wait_for(lambda: sandbox.status(name)["cluster"]["role"] == "holder", 20, what="the lease held")
    sandbox.ok("stop", name)
    info = sandbox.status(name)
    assert info["phase"] == "stopped" and info["cluster"]["supervisor"] == "", info["cluster"]
    text = sandbox.ws("status", name).stdout
    assert "supervisor gone" not in text and "disabled" in text, text
    sandbox.ok("start", name)
    wait_for(lambda: sandbox.status(name)["running"], 20, what="the job running again")
    sandbox.ok("uninstall", name)
