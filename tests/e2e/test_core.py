"""The core commands as the test user: install, run, status, logs, stop/start/restart, uninstall."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import Sandbox, holds_for, is_zombie, pids_with_arg, wait_for

TRICKY_CRONTAB = (
    b"# my own crontab, hands off\n"
    b"MAILTO=\"\"\n"
    b"FOO = spaced value\n"
    b"\n"
    b"0 0 * * 7\techo 'a #b' >/dev/null\n"
    b"@reboot echo started % and more\n"
    b"*/5 * * * * date +\\%Y-\\%m-\\%d >/dev/null 2>&1\n"
    b"# a comment right above a job\n"
    b"1 2 3 4 5 true\n"
    b"   \n"
    b"LAST_VAR=after-the-last-job\n"
)


def alive(pid: int) -> bool:
    return os.path.exists(f"/proc/{pid}") and not is_zombie(pid)


def install_sleeper(box: Sandbox, name: str, *extra: str) -> str:
    """Install a daemon whose argv holds a unique marker; return the marker."""
    marker = f"marker-{name}"
    box.ok("install", name, *extra, "--", "/usr/bin/python3", "-c",
           "import time; time.sleep(10**6)", marker)
    return marker


@pytest.mark.cron_ticks  # the default schedule is one of the fields; the lock it holds answers a tick
def test_install_starts_now_and_status_reports_every_field(sandbox: Sandbox) -> None:
    name = sandbox.job("web")
    marker = install_sleeper(sandbox, name)
    pids = pids_with_arg(marker, sandbox.user.uid)
    assert len(pids) == 1
    info = sandbox.status(name)
    for key in ("name", "installed", "enabled", "running", "pid", "supervisor_pid", "started_at", "restarts",
                "last_exit_code", "schedule", "command", "stdout_log", "stderr_log", "lock_path", "host"):
        assert key in info
    assert info["running"] and info["installed"] and info["enabled"]
    assert info["pid"] == pids[0]
    assert info["schedule"] == "* * * * *"
    assert info["command"][-1] == marker
    # The default lock folder: a name of its own under /tmp, recorded in the per-host state folder.
    assert sandbox.lock_dir().startswith(f"/tmp/watchdog-singleton-{sandbox.user.uid}-")
    assert info["lock_path"] == f"{sandbox.lock_dir()}/{name}.lock"
    assert info["host"] == os.uname().nodename
    assert time.strptime(info["started_at"][:19], "%Y-%m-%dT%H:%M:%S")
    assert sandbox.ws("status", name).returncode == 0
    listing = json.loads(sandbox.ok("status", "--json").stdout)
    assert [i["name"] for i in listing] == [name]
    table = sandbox.ok("status").stdout
    assert name in table and "running" in table


def test_status_exit_codes(sandbox: Sandbox) -> None:
    assert sandbox.ws("status", "nope").returncode == 4
    name = sandbox.job("idle")
    sandbox.ok("install", name, "--no-start", "--", "/bin/sleep", "1000")
    assert sandbox.ws("status", name).returncode == 3
    assert sandbox.ws("status").returncode == 0


def test_kill_9_of_the_daemon_restarts_it_and_never_two(sandbox: Sandbox) -> None:
    name = sandbox.job("phoenix")
    marker = install_sleeper(sandbox, name)
    [first] = pids_with_arg(marker, sandbox.user.uid)
    os.kill(first, signal.SIGKILL)
    seen_max = 0

    def replaced() -> bool:
        nonlocal seen_max
        pids = pids_with_arg(marker, sandbox.user.uid)
        seen_max = max(seen_max, len(pids))
        return len(pids) == 1 and pids[0] != first

    wait_for(replaced, 65, interval=0.02, what="a new copy after kill -9")
    sandbox.fire_tick(name)  # a cron tick meanwhile is a no-op
    assert holds_for(lambda: len(pids_with_arg(marker, sandbox.user.uid)) == 1, 2.0)
    assert seen_max == 1
    info = sandbox.status(name)
    assert info["restarts"] == 1 and info["last_exit_code"] == -9


def test_twenty_simultaneous_runs_start_exactly_one_daemon(sandbox: Sandbox) -> None:
    name = sandbox.job("crowd")
    marker = install_sleeper(sandbox, name, "--no-start")
    cmd = [sys.executable, "-m", "watchdog_singleton", "run", name]
    runners = [subprocess.Popen(cmd, env=sandbox.env(), cwd=sandbox.dir, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, **sandbox.user.popen_kwargs()) for _ in range(20)]
    try:
        wait_for(lambda: pids_with_arg(marker, sandbox.user.uid), 30, what="one daemon")
        # The losers exit 0 at once and print nothing; the winner stays as the supervisor.
        losers = wait_for(lambda: [r for r in runners if r.poll() is not None] if
                          sum(r.poll() is not None for r in runners) == 19 else None, 30,
                          what="19 launchers to give up")
        for r in losers:
            out, err = r.communicate()
            assert r.returncode == 0 and out == b"" and err == b""
        assert holds_for(lambda: len(pids_with_arg(marker, sandbox.user.uid)) == 1, 1.0)
    finally:
        for r in runners:
            if r.poll() is None:
                r.terminate()
                r.wait(30)


def test_uninstall_kills_the_whole_tree_including_setsid_grandchild_and_term_ignorer(sandbox: Sandbox) -> None:
    name = sandbox.job("tree")
    daemon = sandbox.write_helper("tree_daemon.py")
    pidfile = sandbox.path("tree.pids")
    sandbox.ok("install", name, "--grace", "2", "--", "/usr/bin/python3", daemon, pidfile)
    wait_for(lambda: os.path.exists(pidfile), 20, what="the tree to be ready")
    pids = [int(p) for p in open(pidfile).read().split()]
    assert len(pids) == 4 and all(alive(p) for p in pids)
    sup = sandbox.status(name)["supervisor_pid"]
    proc = sandbox.ws("uninstall", name)
    assert proc.returncode == 0, proc.stderr
    left = [p for p in pids + [sup] if alive(p)]
    assert left == []
    assert f"#watchdog-singleton:{name}".encode() not in sandbox.crontab()
    assert sandbox.ws("status", name).returncode == 4


def test_uninstall_stops_a_daemon_whose_crontab_line_was_removed_by_hand(sandbox: Sandbox) -> None:
    name = sandbox.job("orphan")
    marker = install_sleeper(sandbox, name)
    sandbox.set_crontab(b"")
    assert pids_with_arg(marker, sandbox.user.uid)
    sandbox.ok("uninstall", name)
    assert pids_with_arg(marker, sandbox.user.uid) == []


def test_uninstall_keep_running_leaves_the_daemon(sandbox: Sandbox) -> None:
    name = sandbox.job("keeper")
    marker = install_sleeper(sandbox, name)
    [pid] = pids_with_arg(marker, sandbox.user.uid)
    sandbox.ok("uninstall", name, "--keep-running")
    assert alive(pid)
    assert f"#watchdog-singleton:{name}".encode() not in sandbox.crontab()
    sandbox.ok("uninstall", name)  # still known through its run state: now stop it
    assert not alive(pid)


def test_foreign_crontab_is_byte_identical_through_every_command(sandbox: Sandbox) -> None:
    sandbox.set_crontab(TRICKY_CRONTAB)
    assert sandbox.crontab() == TRICKY_CRONTAB
    a, b, c = sandbox.job("a"), sandbox.job("b"), sandbox.job("c")
    install_sleeper(sandbox, a)
    install_sleeper(sandbox, b, "--schedule", "0 0 * * 7")
    install_sleeper(sandbox, c, "--no-start", "--schedule", "@reboot")
    install_sleeper(sandbox, a)  # reinstall, same input
    text = sandbox.crontab()
    assert text.startswith(TRICKY_CRONTAB)
    assert text.count(f"#watchdog-singleton:{a}".encode()) == 1
    assert b"\n0 0 * * 7 d=" in text and b"\n@reboot d=" in text
    same = sandbox.crontab()
    install_sleeper(sandbox, a)
    assert sandbox.crontab() == same  # same input, same crontab
    for step in (("stop", a), ("start", a), ("restart", b), ("stop", b), ("uninstall", c)):
        sandbox.ok(*step)
        assert sandbox.crontab().startswith(TRICKY_CRONTAB), step
    sandbox.ok("uninstall", a)
    sandbox.ok("uninstall", b)
    assert sandbox.crontab() == TRICKY_CRONTAB


def test_stop_disables_and_stops_start_enables_and_starts(sandbox: Sandbox) -> None:
    name = sandbox.job("svc")
    marker = install_sleeper(sandbox, name)
    [pid] = pids_with_arg(marker, sandbox.user.uid)
    sandbox.ok("stop", name)
    assert not alive(pid)
    line = [x for x in sandbox.crontab().decode().splitlines() if x.endswith(name)][0]
    assert line.startswith("#")
    sandbox.run_as(["/bin/true"])
    info = sandbox.status(name)
    assert not info["running"] and not info["enabled"]
    sandbox.ok("start", name)
    [pid2] = pids_with_arg(marker, sandbox.user.uid)
    assert pid2 != pid
    assert sandbox.status(name)["enabled"]
    sandbox.ok("restart", name)
    [pid3] = pids_with_arg(marker, sandbox.user.uid)
    assert pid3 != pid2


def test_a_tick_of_a_stopped_job_starts_nothing(sandbox: Sandbox) -> None:
    name = sandbox.job("quiet")
    marker = install_sleeper(sandbox, name)
    line = sandbox.cron_line(name)
    sandbox.ok("stop", name)
    # Even the old line, fired as cron would (the race of a tick with stop), must not start it.
    command = line.split(" ", 5)[5].replace("\\%", "%")
    sandbox.run_as(["/bin/sh", "-c", command], env={"HOME": sandbox.user.home, "PATH": "/usr/bin:/bin"})
    assert pids_with_arg(marker, sandbox.user.uid) == []


def test_logs_command_prints_the_tail_of_each_stream(sandbox: Sandbox) -> None:
    name = sandbox.job("talker")
    sandbox.ok("install", name, "--", "/usr/bin/python3", "-u", "-c",
               "import sys, time; [print('out', i) for i in range(30)]; print('err-line', file=sys.stderr); "
               "sys.stderr.flush(); time.sleep(1000)")
    out = wait_for(lambda: (lambda p: p.stdout if "out 29" in p.stdout else None)(sandbox.ws("logs", name, "-n", "3")),
                   10, what="stdout in the log")
    assert out.splitlines() == ["out 27", "out 28", "out 29"]
    err = sandbox.ok("logs", name, "--stderr", "-n", "50").stdout
    assert "err-line" in err and "out 29" not in err
    follower = subprocess.Popen([sys.executable, "-m", "watchdog_singleton", "logs", name, "-n", "0", "--follow"],
                                env=sandbox.env(), stdout=subprocess.PIPE, **sandbox.user.popen_kwargs())
    try:
        time.sleep(0.5)  # let the follower reach the end of the file before we append
        with open(sandbox.status(name)["stdout_log"], "a") as f:
            f.write("appended later\n")
        assert follower.stdout is not None
        assert follower.stdout.readline() == b"appended later\n"
    finally:
        follower.terminate()
        follower.wait(10)


def test_adhoc_run_holds_the_lock_and_returns_the_exit_code(sandbox: Sandbox) -> None:
    name = sandbox.job("batch")
    proc = sandbox.ws("run", name, "--", "/bin/sh", "-c", "echo hi; exit 7")
    assert proc.returncode == 7 and proc.stdout == "hi\n"
    holder = subprocess.Popen([sys.executable, "-m", "watchdog_singleton", "run", name, "--", "/bin/sleep", "30"],
                              env=sandbox.env(), **sandbox.user.popen_kwargs())
    try:
        wait_for(lambda: pids_with_arg("30", sandbox.user.uid) and sandbox.status(name)["running"], 10)
        second = sandbox.ws("run", name, "--", "/bin/sh", "-c", "echo should-not-run")
        assert second.returncode == 0 and second.stdout == "" and second.stderr == ""
        # flock(1) on the same lock file agrees that it is held.
        lock = sandbox.status(name)["lock_path"]
        assert sandbox.run_as(["flock", "-n", lock, "true"]).returncode == 1
    finally:
        holder.terminate()
        holder.wait(30)


def test_lean_mode_keeps_no_process_of_ours_and_cron_restarts_it(sandbox: Sandbox) -> None:
    name = sandbox.job("lean")
    daemon = sandbox.write_helper("argv_daemon.py")
    marker = f"marker-{name}"
    sandbox.ok("install", name, "--lean", "--env", f"ARGV_OUT={sandbox.path('rec.json')}", "--",
               "/usr/bin/python3", daemon, marker)
    [pid] = pids_with_arg(marker, sandbox.user.uid)
    info = sandbox.status(name)
    assert info["running"] and info["lean"] and info["pid"] == pid and info["supervisor_pid"] is None
    # Nothing of ours beside the daemon: no process of the user names this sandbox's state folder.
    ours = [p for p in pids_with_arg("watchdog_singleton", sandbox.user.uid)
            if sandbox.dir.encode() in open(f"/proc/{p}/cmdline", "rb").read()]
    assert ours == []
    assert sandbox.run_as(["flock", "-n", info["lock_path"], "true"]).returncode == 1  # the daemon holds it
    wait_for(lambda: os.path.exists(info["stderr_log"]) and "stderr line" in open(info["stderr_log"]).read(), 10)
    sandbox.fire_tick(name)
    assert pids_with_arg(marker, sandbox.user.uid) == [pid]
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not alive(pid), 10)
    assert sandbox.status(name)["running"] is False
    sandbox.fire_tick(name)  # lean: only cron brings it back
    [pid2] = wait_for(lambda: pids_with_arg(marker, sandbox.user.uid), 10)
    assert pid2 != pid
    sandbox.ok("uninstall", name)
    assert pids_with_arg(marker, sandbox.user.uid) == []


def test_adhoc_run_killed_by_a_signal_exits_128_plus_the_signal(sandbox: Sandbox) -> None:
    name = sandbox.job("sig")
    proc = sandbox.ws("run", name, "--", "/bin/sh", "-c", "kill -TERM $$")
    assert proc.returncode == 128 + 15
