"""What install says of a shared periodic job: its supervisor keeps the due times (as for a job's
own supervisor), never "running NAME: pid RESIDENT", which named the shared resident as the job's
process. Both ways a shared job is taken: the first (a new resident) and the next (its socket)."""

from __future__ import annotations

import pytest
from conftest import Sandbox
from sharedkit import residents


@pytest.mark.cron_ticks  # --every: the crontab line only keeps the supervisor alive
def test_install_of_a_shared_periodic_job_says_its_supervisor_keeps_the_due_times(sandbox: Sandbox) -> None:
    said = []
    for base in ("first", "next"):
        name = sandbox.job(base)
        proc = sandbox.ok("install", name, "--shared", "--every", "3600", "--", "/bin/true")
        said.append((name, proc.stdout))
    [house] = residents(sandbox)
    for name, out in said:
        assert f"{name}: its supervisor (pid {house}) keeps the due times" in out, out
        assert f"running {name}" not in out, out
