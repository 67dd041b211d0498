"""Periodic jobs and daemon lifetimes for real (issue 8): as the unprivileged test user, with real
processes, and one test on the real cron daemon's ticks."""

from __future__ import annotations

import os
import time

import pytest
from conftest import Sandbox, pids_with_arg, wait_for


def spans(path: str) -> list[tuple[float, float]]:
    """(start, end) of each finished run, from a file the job appends `S t` and `E t` to."""
    if not os.path.exists(path):
        return []
    out, start = [], None
    for line in open(path).read().split("\n"):
        kind, _, value = line.partition(" ")
        if kind == "S":
            start = float(value)
        elif kind == "E" and start is not None:
            out.append((start, float(value)))
            start = None
    return out


def starts(path: str) -> list[float]:
    return [float(line[2:]) for line in open(path).read().split("\n") if line.startswith("S ")] \
        if os.path.exists(path) else []


def recorder(path: str, seconds: float) -> list[str]:
    """A job that records its start and end, taking `seconds`."""
    return ["/bin/sh", "-c", f'echo "S $(date +%s.%N)" >> {path}; sleep {seconds}; echo "E $(date +%s.%N)" >> {path}']


@pytest.mark.cron_ticks  # --every: the crontab line only keeps the supervisor alive
def test_every_5_runs_about_every_5_s_with_no_overlap(sandbox: Sandbox) -> None:
    name = sandbox.job("every5")
    runs = sandbox.path("runs")
    proc = sandbox.ok("install", name, "--every", "5", "--", *recorder(runs, 1.5))
    assert "running" in proc.stdout or "pid" in proc.stdout
    wait_for(lambda: len(spans(runs)) >= 5, 40, what="five runs")
    done = spans(runs)
    for (s1, e1), (s2, _) in zip(done, done[1:]):
        assert s2 >= e1, "a run started while the previous one was going"
        assert 4.5 <= s2 - s1 <= 6.0, f"runs {s2 - s1:.2f} s apart, start to start: {done}"
    info = sandbox.status(name)
    assert info["periodic"] and info["runs"] >= 4 and info["last_result"] == "ok"
    assert info["next_due_at"] and info["history"][-1]["result"] == "ok"
    table = sandbox.ok("status", name, "--history").stdout
    assert "DUE" in table and "ok" in table
    sandbox.ok("uninstall", name)


@pytest.mark.cron
def test_a_periodic_job_runs_from_cron_and_a_slow_run_is_never_joined(sandbox: Sandbox, cron_daemon: None) -> None:
    name = sandbox.job("slowcron")
    runs = sandbox.path("runs")
    # Every minute; each run lasts 65 s, so the next minute's tick finds it still going.
    proc = sandbox.ok("install", name, "--periodic", "--schedule", "* * * * *", "--timeout", "300",
                      "--", *recorder(runs, 65))
    assert "next is" in proc.stdout  # cron fires it: nothing runs at install
    assert starts(runs) == []
    wait_for(lambda: starts(runs), 70, interval=0.2, what="cron to start the first run")
    for _ in range(3):  # manual runs while it goes start nothing
        assert sandbox.ws("run", name).returncode == 0
    time.sleep(0.5)
    assert len(starts(runs)) == 1
    wait_for(lambda: spans(runs), 80, interval=0.5, what="the slow run to end")
    time.sleep(1.0)
    assert len(starts(runs)) == 1, "a second run joined the slow one"
    info = sandbox.status(name)
    assert info["runs"] == 1 and info["skipped"] >= 1
    assert "skipped" in info["last_result"]
    sandbox.ok("uninstall", name)


@pytest.mark.cron_ticks  # --every: the crontab line only keeps the supervisor alive
def test_a_timeout_kills_the_runs_tree_including_a_setsid_grandchild(sandbox: Sandbox) -> None:
    name = sandbox.job("hang")
    sandbox.ok("install", name, "--every", "60", "--timeout", "2", "--grace", "1", "--",
               "/bin/sh", "-c", "setsid /bin/sleep 1013 & exec /bin/sleep 1014")
    wait_for(lambda: pids_with_arg("1013", sandbox.user.uid), 10, what="the setsid grandchild")
    wait_for(lambda: sandbox.status(name)["timeouts"] == 1, 15, what="the timeout")
    assert pids_with_arg("1013", sandbox.user.uid) == [] and pids_with_arg("1014", sandbox.user.uid) == []
    info = sandbox.status(name)
    assert info["history"][-1]["result"] == "timed out" and info["failures"] == 1
    sandbox.ok("uninstall", name)


def test_max_lifetime_replaces_the_daemon_after_sigterm(sandbox: Sandbox) -> None:
    name = sandbox.job("aging")
    terms = sandbox.path("terms")
    sandbox.ok("install", name, "--max-lifetime", "10", "--", "/bin/sh", "-c",
               f"trap 'echo TERM >> {terms}; exit 0' TERM; /bin/sleep 1015 & wait")
    first = sandbox.status(name)["pid"]
    new = wait_for(lambda: (sandbox.status(name)["pid"] or first) != first and sandbox.status(name)["pid"], 25,
                   what="a new copy after --max-lifetime")
    assert new != first
    assert open(terms).read().startswith("TERM"), "the old copy got SIGTERM first"
    assert len(pids_with_arg("1015", sandbox.user.uid)) == 1
    sandbox.ok("uninstall", name)


def test_the_state_folder_survives_restart_and_reinstall_and_goes_with_purge(sandbox: Sandbox) -> None:
    name = sandbox.job("ckpt")
    script = ('echo "$WATCHDOG_SINGLETON_NAME $WATCHDOG_SINGLETON_STATE_DIR" >> "$WATCHDOG_SINGLETON_STATE_DIR/seen"; '
              "exec /bin/sleep 1016")
    sandbox.ok("install", name, "--", "/bin/sh", "-c", script)
    folder = os.path.join(sandbox.state_home, "watchdog-singleton", "job-state", name)
    seen = os.path.join(folder, "seen")
    wait_for(lambda: os.path.exists(seen), 10, what="the checkpoint")
    sandbox.ok("restart", name)
    sandbox.ok("install", name, "--", "/bin/sh", "-c", script + " # changed")
    wait_for(lambda: len(open(seen).read().splitlines()) == 3, 10, what="three starts seen")
    assert set(open(seen).read().splitlines()) == {f"{name} {folder}"}
    assert os.stat(folder).st_mode & 0o777 == 0o700
    sandbox.ok("uninstall", name, "--purge")
    assert not os.path.exists(folder)


@pytest.mark.cron_ticks  # --every: the crontab line only keeps the supervisor alive
def test_a_loop_job_with_a_2_s_run_and_a_6_s_period_runs_back_to_back_and_never_skips(sandbox: Sandbox) -> None:
    name = sandbox.job("loop6")
    runs = sandbox.path("runs")
    sandbox.ok("install", name, "--every", "6", "--loop", "--", *recorder(runs, 2))
    wait_for(lambda: len(spans(runs)) >= 8, 60, what="eight runs")
    done = spans(runs)
    gaps = [s2 - e1 for (_, e1), (s2, _) in zip(done, done[1:])]
    assert all(0 <= g < 1.0 for g in gaps), f"it idled between runs (PanDA's loop runs back to back): {gaps}"
    info = sandbox.status(name)
    assert info["skipped"] == 0 and all(h["result"] != "skipped" for h in info["history"]), info["history"]
    assert info["runs"] >= 2 and any(h.get("loops", 0) >= 2 for h in info["history"])
    sandbox.ok("uninstall", name)
