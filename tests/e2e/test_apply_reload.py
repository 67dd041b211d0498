"""`apply` of a file whose change needs no restart hands the new settings to the running
supervisor at once (SIGUSR2), as `install` does: the daemon keeps its pid, the new value rules."""

from __future__ import annotations

import os

import pytest
from conftest import Sandbox, wait_for


def write(box: Sandbox, text: str) -> str:
    path = box.path("jobs.toml")
    with open(path, "w") as fh:
        fh.write(text)
    os.chown(path, box.user.uid, box.user.gid)
    return path


@pytest.mark.cron_ticks  # a --every job's line is every minute; a tick meets the lock its supervisor holds
def test_apply_of_a_new_period_reaches_the_running_supervisor_without_a_restart(sandbox: Sandbox) -> None:
    name = sandbox.job("tempo")
    table = f'[jobs.{name}]\ncommand = ["/bin/true"]\nsettle = 0\nperiod = {{}}\n'
    path = write(sandbox, table.format(3600))
    sandbox.ok("apply", path)
    wait_for(lambda: sandbox.status(name)["runs"] == 1, 20, what="the first run")
    supervisor = sandbox.status(name)["supervisor_pid"]
    assert supervisor
    write(sandbox, table.format(1))
    out = sandbox.ok("apply", path).stdout
    assert f"updated {name}; it runs on with the new settings" in out, out
    # Once an hour before; now every second, by the same supervisor.
    wait_for(lambda: sandbox.status(name)["runs"] >= 3, 20, what="runs at the new period")
    assert sandbox.status(name)["supervisor_pid"] == supervisor
