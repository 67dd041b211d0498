"""The anchor above the shared resident (supervisor/anchor.py), as the test user with real processes:
a kill -9 of the resident touches no job. The same daemons run on under a new resident at once (no
tick), nothing they wrote meanwhile is lost, their exit status is known again, and a kill -9 of the
anchor itself touches nothing either."""

from __future__ import annotations

import os
import signal

from conftest import Sandbox, holds_for, is_zombie, pids_with_arg, wait_for
from userkit import read_bytes

NEVER = "0 0 1 1 *"  # cron does not fire it during the test: no tick may help
# A line every 0.1 s, on the wall clock's tenths: both daemons write at the same moments.
CHATTY = ("import itertools, time\nfor i in itertools.count():\n    print(i, flush=True)\n"
          "    time.sleep(0.1 - time.time() % 0.1)")


def ours(box: Sandbox, module: bytes) -> list[int]:
    found = []
    for pid in pids_with_arg("--state-dir", box.user.uid) + pids_with_arg(box.state_root, box.user.uid):
        cmdline = read_bytes(f"/proc/{pid}/cmdline")
        if module in cmdline and box.dir.encode() in cmdline and pid not in found and not is_zombie(pid):
            found.append(pid)
    return found


def residents(box: Sandbox) -> list[int]:
    return ours(box, b"housemain")


def anchors(box: Sandbox) -> list[int]:
    return ours(box, b"supervisor.anchor")


def runs(path: str) -> list[list[int]]:
    """The log's numbers, cut where a daemon started again from 0; a gap fails the test."""
    with open(path) as f:
        numbers = [int(line) for line in f.read().split("\n")[:-1] if line.isdigit()]
    found: list[list[int]] = []
    for n in numbers:
        if n == 0 or not found:
            found.append([])
        assert not found[-1] or n == found[-1][-1] + 1, f"{path}: {found[-1][-1]} then {n}"
        found[-1].append(n)
    return found


def lines(path: str) -> int:
    with open(path, "rb") as f:
        return f.read().count(b"\n")


def between_writes(logs: list[str]) -> None:
    """Right after both daemons' lines of one tenth are in their logs. What the resident read and
    its writer thread did not yet write is lost with it (a moment's worth); the pipes are the
    anchor's care, and that is what this test is about."""
    counts = [lines(log) for log in logs]
    wait_for(lambda: all(lines(log) > count for log, count in zip(logs, counts)), 5, interval=0.002,
             what="a line in each log")


def dead(pid: int) -> bool:
    return not os.path.exists(f"/proc/{pid}") or is_zombie(pid)


def test_kill_9_of_the_shared_resident_touches_no_job(sandbox: Sandbox) -> None:
    jobs: dict[str, str] = {}
    for base in ("left", "right"):
        name = sandbox.job(base)
        jobs[name] = f"marker-{name}"
        sandbox.ok("install", name, "--shared", "--schedule", NEVER, "--grace", "2", "--",
                   "/usr/bin/python3", "-u", "-c", CHATTY, jobs[name])
    before = {name: pids_with_arg(marker, sandbox.user.uid) for name, marker in jobs.items()}
    assert all(len(pids) == 1 for pids in before.values()), before
    logs = {name: sandbox.status(name)["stdout_log"] for name in jobs}
    [house] = wait_for(lambda: residents(sandbox), 10, what="the resident")
    [anchor] = wait_for(lambda: anchors(sandbox), 10, what="the anchor")
    wait_for(lambda: all(len(runs(log)[0]) >= 5 for log in logs.values() if runs(log)), 10, what="output")

    between_writes(list(logs.values()))
    os.kill(house, signal.SIGKILL)
    wait_for(lambda: dead(house), 10, what="the resident to die")
    [second] = wait_for(lambda: [p for p in residents(sandbox) if p != house], 5, interval=0.02,
                        what="a new resident, started by the anchor")
    counts = {name: len(runs(log)[0]) for name, log in logs.items()}
    for name in jobs:
        info = wait_for(lambda name=name: (lambda i: i if i["supervisor_pid"] == second else None)(  # type: ignore[misc]
            sandbox.status(name)), 5, what=f"{name} supervised by the new resident")
        assert info["running"] and info["pid"] == before[name][0], info
        assert pids_with_arg(jobs[name], sandbox.user.uid) == before[name], "a daemon was restarted"
    # The same daemons, written on into the same logs: nothing lost while no resident read them.
    wait_for(lambda: all(len(runs(log)[0]) >= counts[name] + 20 for name, log in logs.items()), 20,
             what="the output to go on")
    assert all(len(runs(log)) == 1 for log in logs.values()), "a daemon started again"
    assert anchors(sandbox) == [anchor]

    # One adopted daemon's kill -9: restarted at once, its status known; the other untouched.
    (first, first_marker), (other, other_marker) = jobs.items()
    os.kill(before[first][0], signal.SIGKILL)
    wait_for(lambda: pids_with_arg(first_marker, sandbox.user.uid) not in ([], before[first]), 10,
             interval=0.02, what="the adopted daemon restarted")
    info = sandbox.status(first)
    assert info["supervisor_pid"] == second and info["last_exit_code"] == -9 and not info["last_exit_unknown"], info
    assert pids_with_arg(other_marker, sandbox.user.uid) == before[other]
    wait_for(lambda: len(runs(logs[first])) == 2, 10, what="the restarted daemon's output")

    # kill -9 of the anchor: the resident and both daemons run on.
    now = {name: pids_with_arg(marker, sandbox.user.uid) for name, marker in jobs.items()}
    os.kill(anchor, signal.SIGKILL)
    wait_for(lambda: dead(anchor), 10, what="the anchor to die")
    assert holds_for(lambda: residents(sandbox) == [second] and all(
        pids_with_arg(marker, sandbox.user.uid) == now[name] for name, marker in jobs.items()), 1.0)
    counts = {name: len(runs(log)[-1]) for name, log in logs.items()}
    wait_for(lambda: all(len(runs(log)[-1]) >= counts[name] + 5 for name, log in logs.items()), 10,
             what="the output to go on without the anchor")
    assert len(runs(logs[other])) == 1
