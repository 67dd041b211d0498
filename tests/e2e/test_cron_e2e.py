"""End to end through the real cron daemon, and periodic jobs in real time, as the unprivileged
test user.

Real cron ticks come once a minute, so the module spends one minute boundary for all its cron
checks: the fixture installs three daemons with --no-start and a periodic job whose runs last
65 s, and the real cron daemon must start each of them at the next boundary. While that slow run
goes on (until the tick after it must find it still going and skip), the periodic tests that take
real seconds run beside it, so its minute is spent once.
"""

from __future__ import annotations

import json
import os
import stat
import time
from typing import Any, Iterator, TypedDict

import pytest
from conftest import Sandbox, UnprivilegedUser, make_sandbox, pids_with_arg, wait_for

TRICKY_ARGS = ["two words", "it's", 'say "hi"', "100%", "%%d", "$HOME", "${PATH}", "#not-a-comment",
               "a # b", "*", "back\\slash", "tab\there", "`date`", "$(id)", ";", "&&", "", "-n"]
SLOW_RUN = 65.0  # longer than a minute: the tick after the one that started it finds it going


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



class CronStarted(TypedDict):
    box: Sandbox
    plain: str
    tricky: str
    pathy: str
    slow: str  # the periodic job cron fires every minute, each run SLOW_RUN long
    runs: str  # its record of starts and ends


CRON_WAKE_SLACK = 5.0  # seconds cron may wake late for a minute on a loaded CI machine


@pytest.fixture(scope="module")
def cron_started(test_user: UnprivilegedUser, cron_daemon: None) -> Iterator[CronStarted]:
    box = make_sandbox(test_user, "cron_e2e", ticks=True)
    daemon = box.write_helper("argv_daemon.py")
    plain, tricky, pathy = box.job("plain"), box.job("tricky"), box.job("pathy")
    # A program found only through the install-time PATH, which itself calls a second program
    # found the same way: both must work under cron's PATH=/usr/bin:/bin.
    bin1, bin2 = box.mkdir("bin1"), box.mkdir("bin2")
    for path, body in ((os.path.join(bin1, "mytool"), 'exec helper-two "$@"\n'),
                       (os.path.join(bin2, "helper-two"), f'exec /usr/bin/python3 {daemon} "$@"\n')):
        with open(path, "w") as f:
            f.write("#!/bin/sh\n" + body)
        os.chmod(path, 0o755)
        os.chown(path, test_user.uid, test_user.gid)
    user_path = f"{bin1}:{bin2}:/usr/bin:/bin"
    slow, runs = box.job("slowcron"), box.path("runs")
    # cron reads a changed crontab when it wakes for a minute, and on a busy machine it wakes late:
    # installs in a minute's first seconds may rightly run in that very minute. Start past them.
    if time.time() % 60 < CRON_WAKE_SLACK:
        time.sleep(CRON_WAKE_SLACK - time.time() % 60)
    began = time.time()
    proc = box.ok("install", slow, "--periodic", "--schedule", "* * * * *", "--timeout", "300", "--",
                  *recorder(runs, SLOW_RUN))
    assert "next is" in proc.stdout  # cron fires it: nothing runs at install
    for name, argv, env_path in ((plain, ["/usr/bin/python3", daemon, "plain"], "/usr/bin:/bin"),
                                 (tricky, ["/usr/bin/python3", daemon, *TRICKY_ARGS], "/usr/bin:/bin"),
                                 (pathy, ["mytool", "via-path"], user_path)):
        box.ok("install", name, "--no-start", "--env", f"ARGV_OUT={box.path(name + '.json')}", "--",
               *argv, env=box.env(path=env_path))
    if int(time.time() // 60) == int(began // 60):
        # No minute boundary since the installs, so no cron tick: --no-start started nothing.
        # (Across a boundary, cron may rightly have started them already.)
        for name in (plain, tricky, pathy):
            assert not os.path.exists(box.path(name + ".json")), f"{name} started without cron"
            assert box.status(name)["running"] is False
        assert starts(runs) == []
    yield {"box": box, "plain": plain, "tricky": tricky, "pathy": pathy, "slow": slow, "runs": runs}
    box.cleanup()


def _record(box: Sandbox, name: str) -> dict[str, Any]:
    path = box.path(name + ".json")
    wait_for(lambda: os.path.exists(path), 75, interval=0.5, what=f"cron to start {name}")
    with open(path) as f:
        record = json.load(f)
    assert isinstance(record, dict), record
    return record


@pytest.mark.cron
def test_first_start_comes_from_cron_and_output_reaches_both_logs(cron_started: CronStarted) -> None:
    box, name = cron_started["box"], cron_started["plain"]
    record = _record(box, name)
    info = wait_for(lambda: (lambda s: s if s["running"] else None)(box.status(name)), 10,
                    what="status to say running")
    assert info["pid"] == record["pid"]
    out = wait_for(lambda: open(info["stdout_log"]).read() if os.path.exists(info["stdout_log"]) else "", 10)
    err = wait_for(lambda: open(info["stderr_log"]).read() if os.path.exists(info["stderr_log"]) else "", 10)
    assert f"stdout line from {record['pid']}" in out
    assert f"stderr line from {record['pid']}" in err
    assert f"stderr line from {record['pid']}" not in out
    # Logs sit under XDG_STATE_HOME, in a folder named after the host.
    assert info["stdout_log"].startswith(os.path.join(box.state_home, "watchdog-singleton", os.uname().nodename))
    assert stat.S_IMODE(os.stat(info["stdout_log"]).st_mode) == 0o600


@pytest.mark.cron
def test_tricky_arguments_reach_the_daemon_intact_through_cron(cron_started: CronStarted) -> None:
    record = _record(cron_started["box"], cron_started["tricky"])
    assert record["argv"] == TRICKY_ARGS


@pytest.mark.cron
def test_program_found_through_install_time_path_runs_under_cron(cron_started: CronStarted) -> None:
    box = cron_started["box"]
    record = _record(box, cron_started["pathy"])
    assert record["argv"] == ["via-path"]
    assert record["env"]["PATH"].startswith(box.path("bin1"))


@pytest.mark.cron
def test_cron_environment_is_the_install_time_one(cron_started: CronStarted) -> None:
    box = cron_started["box"]
    record = _record(box, cron_started["plain"])
    env = record["env"]
    assert env["HOME"] == box.user.home
    assert env["WATCHDOG_SINGLETON_JOB"] == cron_started["plain"]
    assert env["ARGV_OUT"].endswith(cron_started["plain"] + ".json")
    assert record["cwd"] == box.dir  # the folder install ran in


@pytest.mark.cron
def test_a_periodic_job_runs_from_cron_and_manual_runs_while_it_goes_start_nothing(cron_started: CronStarted) -> None:
    box, name, runs = cron_started["box"], cron_started["slow"], cron_started["runs"]
    wait_for(lambda: starts(runs), 75, interval=0.2, what="cron to start the first run")
    for _ in range(3):
        assert box.ws("run", name).returncode == 0
    time.sleep(0.5)
    assert len(starts(runs)) == 1


# The periodic tests below take real seconds; they run while the slow run above goes on.

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


@pytest.mark.cron
def test_a_slow_periodic_run_is_never_joined_by_the_next_cron_tick(cron_started: CronStarted) -> None:
    box, name, runs = cron_started["box"], cron_started["slow"], cron_started["runs"]
    wait_for(lambda: spans(runs), 2 * 60 + SLOW_RUN + 15, interval=0.5, what="the slow run to end")
    time.sleep(1.0)
    (first, end), *_ = spans(runs)
    assert end - first >= 60, "the run ended before the next tick could find it"
    assert [s for s in starts(runs) if first < s < end] == [], "a second run joined the slow one"
    info = box.status(name)
    assert info["skipped"] >= 1
    if len(starts(runs)) == 1:  # (a later tick starts the next run after this one ended: not a join)
        assert info["runs"] == 1 and "skipped" in info["last_result"]
    box.ok("uninstall", name)
