"""status as a first real user meets it, found by trying it: a periodic job's record that its
supervisor cannot update (a read-only state folder) is not shown as the truth."""

from __future__ import annotations

import json
import os

import pytest
from conftest import Sandbox, pids_with_arg, wait_for


def _record(sandbox: Sandbox, name: str) -> dict[str, object]:
    with open(os.path.join(sandbox.state_root, "run", f"{name}.json")) as f:
        record: dict[str, object] = json.load(f)
    return record


@pytest.mark.cron_ticks  # --every: the crontab line only keeps the supervisor alive
def test_a_run_under_a_read_only_state_folder_shows_running_not_waiting(sandbox: Sandbox) -> None:
    name = sandbox.job("ro")
    sandbox.ok("install", name, "--every", "4", "--", "/bin/sleep", "2.000000")  # the argument finds its runs
    run_dir = os.path.join(sandbox.state_root, "run")
    frozen_waiting = False
    try:
        for _ in range(5):
            # Freeze the record while it says `waiting` (between two runs), then see the next run go.
            wait_for(lambda: _record(sandbox, name).get("phase") == "waiting", 15, what="a waiting record")
            os.chmod(run_dir, 0o500)
            if _record(sandbox, name).get("phase") == "waiting":
                frozen_waiting = True
                break
            os.chmod(run_dir, 0o700)
        assert frozen_waiting
        runs = wait_for(lambda: pids_with_arg("2.000000", sandbox.user.uid), 15, what="the next run")
        status = sandbox.status(name)
        assert status["running"] is True and status["pid"] in runs, status
        assert "cannot write" in status["problem"], status
        table = sandbox.ws("status", name).stdout
        assert "running" in table and "waiting" not in table, table
    finally:
        os.chmod(run_dir, 0o700)
