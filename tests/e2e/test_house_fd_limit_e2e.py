"""The shared resident under a small open-file limit, end to end as the test user: the first job's
crontab line fired under `ulimit -n 64` (the resident inherits it), the others from a plain
shell, more jobs than 64 descriptors hold (about 8 before the resident raised its limit). Every
job runs, once; no tick prints a word (cron would mail it)."""

from __future__ import annotations

import os
import re
import subprocess

from conftest import Sandbox, pids_with_arg, wait_for
from sharedkit import residents
from userkit import read_bytes

NEVER = "0 0 1 1 *"
JOBS = 12


def install(box: Sandbox, base: str) -> tuple[str, str]:
    name = box.job(base)
    marker = f"marker-{name}"
    box.ok("install", name, "--shared", "--no-start", "--schedule", NEVER, "--grace", "2", "--",
           "/bin/sh", "-c", "while :; do sleep 1000; done", marker)
    return name, marker


def fire(box: Sandbox, name: str, limit: str = "") -> None:
    """NAME's crontab line as cron runs it, under `ulimit LIMIT` first when given."""
    command = box.tick_command(name)
    proc = subprocess.run(["/bin/sh", "-c", f"ulimit {limit}; {command}" if limit else command],
                          env=box.cron_env(), cwd=box.user.home, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, start_new_session=True, timeout=60, **box.user.popen_kwargs())
    assert proc.stdout == b"", f"a tick printed something (cron would mail it): {proc.stdout!r}"


def open_files(pid: int) -> tuple[str, str]:
    """(soft, hard) from /proc/PID/limits."""
    found = re.search(rb"Max open files\s+(\S+)\s+(\S+)", read_bytes(f"/proc/{pid}/limits"))
    assert found is not None
    return found.group(1).decode(), found.group(2).decode()




def one_each(box: Sandbox, jobs: list[tuple[str, str]]) -> dict[str, int]:
    pids = {name: wait_for(lambda m=marker: pids_with_arg(m, box.user.uid), 20, what=f"{name}'s daemon")  # type: ignore[misc]
            for name, marker in jobs}
    assert all(len(p) == 1 for p in pids.values()), pids
    return {name: p[0] for name, p in pids.items()}


def test_a_resident_started_under_a_small_soft_limit_takes_more_jobs_than_it_would_hold(sandbox: Sandbox) -> None:
    jobs = [install(sandbox, f"fd{i}") for i in range(JOBS)]
    fire(sandbox, jobs[0][0], "-Sn 64")
    for name, _ in jobs[1:]:
        fire(sandbox, name)
    daemons = one_each(sandbox, jobs)
    [house] = residents(sandbox)
    soft, hard = open_files(house)
    assert soft == hard and soft != "64", "the resident kept the soft limit it was started with"
    for name, _ in jobs:
        info = sandbox.status(name)
        assert info["running"] and info["shared"] and info["supervisor_pid"] == house, info
        assert open_files(daemons[name])[0] == "64", "a daemon got the resident's raised limit"


def test_jobs_past_a_small_hard_limit_run_under_supervisors_of_their_own(sandbox: Sandbox) -> None:
    jobs = [install(sandbox, f"fh{i}") for i in range(JOBS)]
    fire(sandbox, jobs[0][0], "-n 64")  # soft and hard: the resident cannot raise it
    for name, _ in jobs[1:]:
        fire(sandbox, name)
    one_each(sandbox, jobs)
    [house] = residents(sandbox)
    assert open_files(house) == ("64", "64")
    own = []
    for name, _ in jobs:
        info = sandbox.status(name)
        assert info["running"], info
        if info["supervisor_pid"] == house:
            assert info["shared"]
            continue
        own.append(name)
        assert not info["shared"] and info["supervisor_pid"] not in (None, house), info
        with open(info["stderr_log"]) as f:
            log = f.read()
        said = (f"the shared supervisor pid {house} has no descriptors left (limit 64): "
                f"{name} runs under a supervisor of its own")
        assert log.count(said) == 1, log
        assert "Too many open files" not in log and "getpwuid" not in log
    assert 0 < len(own) < JOBS - 1, own
    # Fired again, every line finds its job running and does nothing: still one copy each, no word.
    for name, _ in jobs:
        fire(sandbox, name)
    one_each(sandbox, jobs)
    assert residents(sandbox) == [house]
    assert "has no descriptors left" not in "".join(
        open(sandbox.status(name)["stderr_log"]).read() for name, _ in jobs if name not in own)
    assert os.path.exists(f"/proc/{house}")
