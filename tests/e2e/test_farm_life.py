"""A farm's tasks live and die with it: a task that exits 0 is finished even during a stop,
nothing of a task outlives its farm however the farm dies (its watcher killed with it, a
grandchild that cleared its environment), and a farm paused past its lease has stopped its
tasks before another farm runs them. Real farms as the unprivileged test user; each test runs
in a PID namespace (where the host has them) and, where it matters, in the fallback without."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
from typing import Any, Iterator

import pytest
from conftest import TEST_USER, Sandbox, wait_for
from test_farm import WAITER, out_lines, sleeping_tasks, status, task_pids, touch, write_list
from userkit import read_bytes, user_pids

NO_NAMESPACE = {"WATCHDOG_SINGLETON_FARM_NAMESPACE": "0"}


@pytest.fixture(params=["namespace", "fallback"])
def mode(request: Any) -> str:
    return str(request.param)


def mode_env(mode: str) -> dict[str, str]:
    return NO_NAMESPACE if mode == "fallback" else {}


def start_farm(box: Sandbox, *args: str, extra: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "watchdog_singleton", "farm", *args], env=box.env(extra),
                            cwd=box.dir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            **box.user.popen_kwargs())


def farm(box: Sandbox, *args: str, extra: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return box.ws("farm", *args, env=box.env(extra), timeout=120)


def cmdline_pids(box: Sandbox, *parts: bytes) -> list[int]:
    """The test user's live processes whose command line is exactly `parts`."""
    wanted = b"\0".join(parts) + b"\0"
    found = []
    for pid in user_pids(box.user.uid):
        stat = read_bytes(f"/proc/{pid}/stat")
        if stat and stat[stat.rindex(b")") + 2:].split()[0] not in (b"Z", b"X") \
                and read_bytes(f"/proc/{pid}/cmdline") == wanted:
            found.append(pid)
    return found


def farm_processes(box: Sandbox) -> list[int]:
    """The farm's helper processes (watcher, nursery): what `pkill -f watchdog_singleton.farm` hits."""
    return [pid for pid in user_pids(box.user.uid)
            if b"watchdog_singleton.farm." in read_bytes(f"/proc/{pid}/cmdline")]


@pytest.fixture
def leftovers(sandbox: Sandbox) -> Iterator[list[int]]:
    """Pids a test found alive that should not be: killed at the end, whatever happened."""
    found: list[int] = []
    yield found
    for pid in found:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait()


# -- a stop keeps what finished ---------------------------------------------------------

def test_tasks_that_exit_0_during_a_sigusr1_stop_are_finished_and_not_run_again(sandbox: Sandbox,
                                                                                 mode: str) -> None:
    names = [f"s{i}" for i in range(4)]
    # On SIGTERM each saves its work and exits 0; run a second time (after GO), it says so.
    task = ("test -e GO && {{ echo again-{name} >> out; exit 0; }}; "
            "trap 'echo {name} >> out; exit 0' TERM; sleep 600 & wait")
    listing = write_list(sandbox, [task.format(name=n) for n in names])
    first = start_farm(sandbox, listing, "--workers", "4", "--grace", "5", extra=mode_env(mode))
    try:
        wait_for(lambda: sleeping_tasks(sandbox, listing, 4), 30, what="four running tasks")
        os.kill(first.pid, signal.SIGUSR1)
        _, err = first.communicate(timeout=30)
    finally:
        stop(first)
    assert first.returncode == 0, err  # nothing was left to do: every task finished
    st = status(sandbox, listing)
    assert st["counts"]["finished"] == 4 and {t["attempts"] for t in st["tasks"]} == {1}, st["counts"]
    touch(sandbox, "GO")
    again = farm(sandbox, listing, "--workers", "4", extra=mode_env(mode))
    assert again.returncode == 0, again.stderr
    assert sorted(out_lines(sandbox)) == names  # no `again-`: none ran twice


# -- nothing outlives the farm ----------------------------------------------------------

def test_killing_farm_and_watcher_together_leaves_no_task_running_and_reruns_nothing_finished(
        sandbox: Sandbox, leftovers: list[int]) -> None:
    fast = [f"f{i}" for i in range(3)]
    slow = [f"w{i}" for i in range(3)]
    listing = write_list(sandbox, [f"echo {n} >> out" for n in fast] + [WAITER.format(name=n) for n in slow])
    first = start_farm(sandbox, listing, "--workers", "3", "--grace", "1", "--lease", "1")
    try:
        wait_for(lambda: sleeping_tasks(sandbox, listing, 3), 30, what="three waiting tasks")
        helpers = farm_processes(sandbox)
        assert helpers, "no watcher or nursery process found"
        for pid in [first.pid, *helpers]:  # as `pkill -9 -f farm` does: all at once, no one left to clean up
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:  # a helper that saw the farm die first and went (pkill skips it too)
                pass
        first.wait(10)
        try:
            wait_for(lambda: task_pids(sandbox, listing) == [], 10, what="the dead farm's tasks to be gone")
        finally:
            leftovers.extend(task_pids(sandbox, listing))
    finally:
        stop(first)
    touch(sandbox, "GO")
    proc = farm(sandbox, listing, "--workers", "3", "--lease", "1")
    assert proc.returncode == 0, proc.stderr
    assert sorted(out_lines(sandbox)) == sorted(fast + slow)  # each once
    attempts = {t["command"]: t["attempts"] for t in status(sandbox, listing)["tasks"]}
    assert [attempts[f"echo {n} >> out"] for n in fast] == [1, 1, 1]


@pytest.mark.parametrize("how", ["farm killed", "farm ends"])
def test_an_env_cleared_setsid_grandchild_does_not_outlive_the_farm(sandbox: Sandbox, leftovers: list[int],
                                                                   how: str) -> None:
    if how == "farm ends" and not namespaces_work():
        pytest.skip("needs unprivileged user namespaces (the fallback cannot find such a process)")
    # The grandchild has a session of its own and an empty environment: no marker, no parent.
    escape = ("setsid env -i /bin/sh -c 'exec sleep 6001' & "
              "while ! pgrep -x -f 'sleep 6001' >/dev/null; do sleep 0.05; done")
    # "farm ends": the task waits for GO, so the grandchild is seen before the farm can end.
    task = escape + ("; sleep 600" if how == "farm killed" else "; while [ ! -e GO ]; do sleep 0.05; done")
    listing = write_list(sandbox, [task])
    running = start_farm(sandbox, listing, "--workers", "1", "--grace", "1")
    try:
        wait_for(lambda: cmdline_pids(sandbox, b"sleep", b"6001"), 30, what="the grandchild")
        if how == "farm killed":
            os.kill(running.pid, signal.SIGKILL)  # the watcher lives: it cannot find this one by its marker
            running.wait(10)
        else:
            touch(sandbox, "GO")
            _, err = running.communicate(timeout=60)
            assert running.returncode == 0, err
        try:
            wait_for(lambda: cmdline_pids(sandbox, b"sleep", b"6001") == [], 10, what="the grandchild to be gone")
        finally:
            leftovers.extend(cmdline_pids(sandbox, b"sleep", b"6001"))
    finally:
        stop(running)


def namespaces_work() -> bool:
    """Unprivileged user and PID namespaces (what the farm's nursery needs), tried as nobody."""
    user = "nobody" if os.getuid() == 0 else None
    return subprocess.run(["unshare", "-Urp", "--fork", "true"], capture_output=True, user=user).returncode == 0


# -- a paused farm ----------------------------------------------------------------------

HAVE_PG = importlib.util.find_spec("pgkit") is not None and importlib.util.find_spec("psycopg") is not None
if HAVE_PG:
    pytest_plugins = ["pgkit"]
needs_pg = pytest.mark.skipif(not HAVE_PG, reason="needs tests/kits/pgkit.py (the pg_cluster fixture) and psycopg")


@needs_pg
def test_a_farm_paused_past_its_lease_never_runs_a_task_beside_another_farm(sandbox: Sandbox, request: Any,
                                                                            mode: str) -> None:
    pg_cluster = request.getfixturevalue("pg_cluster")
    url = str(pg_cluster)
    pg_cluster.psql("DROP TABLE IF EXISTS farm_tasks", dbname=TEST_USER)
    names = [f"p{i}" for i in range(4)]
    os.makedirs(sandbox.path("locks"))
    os.chown(sandbox.path("locks"), sandbox.user.uid, sandbox.user.gid)
    # A copy that finds another copy running (its lock held) says so instead of running.
    task = ("flock -n locks/{name} -c 'echo $WATCHDOG_SINGLETON_FARM_GENERATION > locks/{name}.gen; sleep 8' "
            "&& echo done-{name} >> out || {{ test -e locks/{name}.gen && echo overlap-{name} >> out; }}")
    listing = write_list(sandbox, [task.format(name=n) for n in names])
    paused = start_farm(sandbox, listing, "--db", url, "--workers", "4", "--workdir", sandbox.path("w1"),
                        "--lease", "2", extra=mode_env(mode))
    other = None
    try:
        wait_for(lambda: len(cmdline_pids(sandbox, b"sleep", b"8")) == 4, 30, what="four running tasks")
        os.kill(paused.pid, signal.SIGSTOP)  # a VM pause, a swap storm
        other = start_farm(sandbox, listing, "--db", url, "--workers", "4", "--workdir", sandbox.path("w2"),
                           "--lease", "2", extra=mode_env(mode))
        _, err = other.communicate(timeout=60)
        assert other.returncode == 0, err
        os.kill(paused.pid, signal.SIGCONT)
        _, paused_err = paused.communicate(timeout=60)
    finally:
        if paused.poll() is None:
            os.kill(paused.pid, signal.SIGCONT)
        stop(paused)
        if other is not None:
            stop(other)
    assert sorted(out_lines(sandbox)) == [f"done-{n}" for n in names]  # no overlap-, none twice
    assert paused.returncode == 0 and "lease" in paused_err, paused_err
    gens = {n: int(open(sandbox.path("locks", f"{n}.gen")).read()) for n in names}
    assert set(gens.values()) == {2}  # the second claim's fence: a task can tell the copies apart
    st = json.loads(farm(sandbox, "status", sandbox.path("w1"), "--db", url, "--json").stdout)
    assert st["counts"]["finished"] == 4
