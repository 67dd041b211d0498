"""Faults the watchdog must survive; each test injects one and checks the invariants:
at most one copy, at least one copy, nothing of the job left behind."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time

import pytest
from conftest import Sandbox, holds_for, is_locked, is_zombie, locked_inodes, pids_with_arg, poll_until, wait_for


def alive(pid: int) -> bool:
    return os.path.exists(f"/proc/{pid}") and not is_zombie(pid)


def copies(box: Sandbox, marker: str) -> list[int]:
    return pids_with_arg(marker, box.user.uid)


def install_sleeper(box: Sandbox, name: str, *extra: str) -> str:
    marker = f"marker-{name}"
    box.ok("install", name, *extra, "--", "/usr/bin/python3", "-c", "import time; time.sleep(10**6)", marker)
    return marker


def test_sigkill_of_the_supervisor_keeps_one_copy_until_the_orphan_dies(sandbox: Sandbox) -> None:
    name = sandbox.job("orphaned")
    marker = install_sleeper(sandbox, name)
    sup = sandbox.status(name)["supervisor_pid"]
    [daemon] = copies(sandbox, marker)
    os.kill(sup, signal.SIGKILL)
    wait_for(lambda: not alive(sup), 10, what="the supervisor to die")
    for _ in range(3):
        sandbox.fire_tick(name)
        assert copies(sandbox, marker) == [daemon]
    assert sandbox.ws("run", name).returncode == 0  # a manual run is a no-op too
    assert sandbox.ws("start", name).returncode == 0
    assert copies(sandbox, marker) == [daemon]
    # The lock is held by the orphaned daemon itself: flock(1) sees it.
    assert sandbox.run_as(["flock", "-n", sandbox.status(name)["lock_path"], "true"]).returncode == 1
    os.kill(daemon, signal.SIGKILL)
    wait_for(lambda: not alive(daemon), 10)
    sandbox.fire_tick(name)
    new = wait_for(lambda: copies(sandbox, marker), 10, what="the next tick to start a new copy")
    assert len(new) == 1 and new[0] != daemon


@pytest.mark.parametrize("what", ["file", "folder"])
def test_deleting_the_lock_while_the_daemon_runs_starts_no_second_copy(sandbox: Sandbox, what: str) -> None:
    name = sandbox.job("cleaned")
    lock_dir = sandbox.tmp_path("wstest-lockdir")
    marker = install_sleeper(sandbox, name, "--lock-dir", lock_dir)
    lock_path = sandbox.status(name)["lock_path"]
    [daemon] = copies(sandbox, marker)
    # What systemd-tmpfiles or tmpwatch would do, as root.
    if what == "file":
        os.unlink(lock_path)
    else:
        shutil.rmtree(lock_dir)
    sandbox.fire_tick(name)  # at once, before the supervisor notices
    assert copies(sandbox, marker) == [daemon]
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        sandbox.fire_tick(name)
        assert copies(sandbox, marker) == [daemon]
    # The supervisor has put a held lock back at the path.
    # The first tick found the supervisor alive and sent it SIGHUP: it looks at once, not at its
    # next lock check (a minute).
    wait_for(lambda: is_locked(lock_path), 15, what="the lock to be put back")
    assert sandbox.run_as(["flock", "-n", lock_path, "true"]).returncode == 1
    assert copies(sandbox, marker) == [daemon]


def test_the_lock_is_protected_from_tmp_cleaners(sandbox: Sandbox) -> None:
    name = sandbox.job("aged")
    install_sleeper(sandbox, name)
    lock_path = sandbox.status(name)["lock_path"]
    lock_dir = os.path.dirname(lock_path)
    st = os.stat(lock_path)
    assert st.st_mode & stat.S_ISVTX, "sticky bit: systemd-tmpfiles never ages such a file"
    assert stat.S_IMODE(st.st_mode) & 0o777 == 0o600
    assert stat.S_IMODE(os.stat(lock_dir).st_mode) == 0o700
    dir_st = os.stat(lock_dir)
    assert (os.major(dir_st.st_dev), os.minor(dir_st.st_dev), dir_st.st_ino) in locked_inodes(), \
        "a flock on the folder: systemd-tmpfiles skips folders that hold one"
    ten_days_ago = time.time() - 10 * 86400
    os.utime(lock_path, (ten_days_ago, ten_days_ago))
    os.utime(lock_dir, (ten_days_ago, ten_days_ago))
    os.kill(sandbox.status(name)["supervisor_pid"], signal.SIGHUP)  # its lock check now, not within a minute
    wait_for(lambda: os.stat(lock_path).st_mtime > time.time() - 60 and os.stat(lock_dir).st_mtime > time.time() - 60,
             10, what="the supervisor to refresh old timestamps (tmpwatch ages by them)")


def test_after_a_reboot_a_reused_pid_is_not_taken_for_the_job(sandbox: Sandbox) -> None:
    name = sandbox.job("rebooted")
    marker = install_sleeper(sandbox, name, "--no-start")
    sigfile = sandbox.path("bystander.signals")
    bystander = subprocess.Popen(
        ["/bin/sh", "-c", f'for s in TERM HUP INT USR1; do trap "echo $s >> {sigfile}" $s; done; '
                          'while :; do sleep 0.1; done'],
        env=sandbox.env(), **sandbox.user.popen_kwargs())
    try:
        wait_for(lambda: alive(bystander.pid), 5)
        # The state a crash left before the reboot: "running", with a PID that now belongs to an
        # unrelated process of the same user, and no lock (/tmp was emptied).
        run_dir = sandbox.mkdir(os.path.relpath(os.path.join(sandbox.state_root, "run"), sandbox.dir))
        state_path = os.path.join(run_dir, f"{name}.json")
        with open(state_path, "w") as f:
            json.dump({"name": name, "phase": "running", "boot_id": "00000000-dead-beef-0000-000000000000",
                       "supervisor_pid": bystander.pid, "supervisor_start": 1, "pid": bystander.pid,
                       "pid_start": 1, "started_at": "2026-01-01T00:00:00+0000", "restarts": 4,
                       "lock_path": sandbox.status(name)["lock_path"]}, f)
        os.chown(state_path, sandbox.user.uid, sandbox.user.gid)
        info = sandbox.status(name)
        assert info["running"] is False and info["pid"] is None and info["supervisor_pid"] is None
        assert sandbox.ws("status", name).returncode == 3
        sandbox.fire_tick(name)
        started = wait_for(lambda: copies(sandbox, marker), 10, what="the tick to start the job")
        assert sandbox.status(name)["pid"] == started[0]
        sandbox.ok("uninstall", name)
        assert copies(sandbox, marker) == []
        assert alive(bystander.pid) and not os.path.exists(sigfile), "the unrelated process was signalled"
    finally:
        bystander.kill()
        bystander.wait()


def start_times(path: str) -> list[float]:
    return [float(t) for t in open(path).read().split()] if os.path.exists(path) else []


def test_crash_loop_restarts_at_once_then_backs_off_exponentially_and_ticks_do_not_bypass_it(
        sandbox: Sandbox) -> None:
    name = sandbox.job("crashy")
    starts = sandbox.path("starts")
    install = sandbox.ws("install", name, "--backoff-initial", "0.25", "--backoff-max", "2",
                         "--", "/bin/sh", "-c", f"date +%s.%N >> {starts}; exit 3")
    assert install.returncode == 1 and "exited with code 3" in install.stderr  # it died at once: said so
    deadline = time.monotonic() + 6.5
    while time.monotonic() < deadline:
        sandbox.fire_tick(name)
        time.sleep(0.2)
    info = sandbox.status(name)
    assert info["last_exit_code"] == 3
    assert info["restarts"] >= 3
    assert info["phase"] in ("backoff", "starting")
    if info["phase"] == "backoff":
        assert info["next_start_at"] and info["backoff_seconds"] > 0
    times = start_times(starts)
    gaps = [b - a for a, b in zip(times, times[1:])]
    # BURST (3) quick runs restart at once; then 0.25, 0.5, 1, 2, 2 ...
    expected = [0.0, 0.0] + [min(2.0, 0.25 * 2 ** i) for i in range(len(gaps))]
    assert 6 <= len(times) <= 11, times  # no fork storm, and not stuck
    for gap, want in zip(gaps, expected):
        assert gap >= want * 0.9, f"restarted after {gap:.2f} s, backoff said {want} s: {gaps}"
        assert gap <= want + 1.5, f"restart came late: {gaps}"
    table = sandbox.ok("status").stdout
    assert "backoff" in table or "starting" in table


def test_a_run_that_lasted_resets_the_backoff(sandbox: Sandbox) -> None:
    name = sandbox.job("flaky")
    starts, count = sandbox.path("starts"), sandbox.path("count")
    # Runs 1-5 fail at once, run 6 lasts 1.5 s, then quick failures again.
    script = (f"n=$(cat {count} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {count}; "
              f"date +%s.%N >> {starts}; [ $n -eq 6 ] && sleep 1.5; exit 3")
    sandbox.ws("install", name, "--backoff-initial", "0.5", "--backoff-max", "8", "--min-uptime", "1",
               "--", "/bin/sh", "-c", script)
    wait_for(lambda: len(start_times(starts)) >= 10, 30, what="ten starts")
    t = start_times(starts)
    assert t[1] - t[0] < 0.4 and t[2] - t[1] < 0.4, "the first quick failures restart at once"
    assert t[3] - t[2] >= 0.45 and t[4] - t[3] >= 0.9 and t[5] - t[4] >= 1.8  # then 0.5, 1, 2
    assert t[6] - t[5] < 1.5 + 0.4, "after a run that lasted, the restart is immediate"
    assert t[7] - t[6] < 0.4 and t[8] - t[7] < 0.4, "and the burst allowance is back"
    assert t[9] - t[8] >= 0.45, "the third quick failure in a row starts the backoff again"


def test_a_child_ignoring_sigterm_is_killed_after_grace(sandbox: Sandbox) -> None:
    name = sandbox.job("stubborn")
    sandbox.ok("install", name, "--grace", "1.5", "--", "/bin/sh", "-c",
               "trap '' TERM; /usr/bin/python3 -c 'import signal, time; "
               "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(10**6)' stubborn-child")
    child = wait_for(lambda: copies(sandbox, "stubborn-child"), 10)
    began = time.monotonic()
    sandbox.ok("stop", name)
    took = time.monotonic() - began
    assert not alive(child[0])
    assert 1.4 <= took < 6, f"stop took {took:.2f} s with --grace 1.5"


def test_sigterm_to_the_supervisor_stops_the_tree_gracefully_and_releases_the_lock(sandbox: Sandbox) -> None:
    name = sandbox.job("polite")
    daemon = sandbox.write_helper("chatty_daemon.py")
    heartbeat = sandbox.path("hb")
    sandbox.ok("install", name, "--", "/usr/bin/python3", daemon, heartbeat, "20", "0.1")
    info = sandbox.status(name)
    os.kill(info["supervisor_pid"], signal.SIGTERM)
    wait_for(lambda: not alive(info["supervisor_pid"]), 15, what="the supervisor to exit")
    assert open(heartbeat + ".term").read() == "TERM\n", "the daemon got SIGTERM and could clean up"
    assert not alive(info["pid"])
    assert sandbox.run_as(["flock", "-n", info["lock_path"], "true"]).returncode == 0
    assert sandbox.status(name)["phase"] == "stopped"
    sandbox.fire_tick(name)  # still enabled: the next tick brings it back
    wait_for(lambda: sandbox.status(name)["running"], 10)


def test_sighup_reopens_the_log_files(sandbox: Sandbox) -> None:
    name = sandbox.job("rotated")
    daemon = sandbox.write_helper("chatty_daemon.py")
    sandbox.ok("install", name, "--", "/usr/bin/python3", daemon, sandbox.path("hb"), "20", "0.05")
    info = sandbox.status(name)
    log = info["stdout_log"]
    wait_for(lambda: os.path.exists(log) and os.path.getsize(log) > 0, 10)
    os.rename(log, log + ".old")  # what an external logrotate does
    os.kill(info["supervisor_pid"], signal.SIGHUP)
    wait_for(lambda: os.path.exists(log) and os.path.getsize(log) > 100, 10, what="a new log file")
    old_size = os.path.getsize(log + ".old")
    assert holds_for(lambda: os.path.getsize(log + ".old") == old_size, 0.5)
    numbers = [int(ln.split()[1]) for f in (log + ".old", log) for ln in open(f) if ln.startswith("line ")]
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers))), "a line was lost at the reopen"
    assert sandbox.status(name)["running"]


def test_logs_rotate_by_size_without_losing_or_splitting_a_line(sandbox: Sandbox) -> None:
    name = sandbox.job("bounded")
    daemon = sandbox.write_helper("chatty_daemon.py")
    total = 20000
    sandbox.ok("install", name, "--log-max-bytes", "65536", "--log-backups", "100", "--",
               "/usr/bin/python3", daemon, sandbox.path("hb"), "0", "0", str(total))
    log = sandbox.status(name)["stdout_log"]
    wait_for(lambda: os.path.exists(sandbox.path("hb")) and open(sandbox.path("hb")).read() == str(total), 30)

    def all_lines() -> list[str]:
        files = sorted((f for f in os.listdir(os.path.dirname(log)) if f.startswith(os.path.basename(log) + ".")),
                       key=lambda f: -int(f.rsplit(".", 1)[1]))
        out = []
        for f in files + [os.path.basename(log)]:
            path = os.path.join(os.path.dirname(log), f)
            data = open(path).read()
            assert data.endswith("\n"), f"{f} ends inside a line"
            assert os.path.getsize(path) <= 65536 + 400, f"{f} is over the limit"
            out.extend(data.splitlines())
        return out

    lines = wait_for(lambda: (lambda ls: ls if len(ls) == total else None)(all_lines()), 20,
                     what="every line in the logs")
    for i, line in enumerate(lines):
        assert line.startswith(f"line {i} ") and len(line) == (i * 37) % 300 + len(f"line {i} "), \
            f"line {i} lost or split: {line[:40]!r}"


def test_log_backups_are_bounded(sandbox: Sandbox) -> None:
    name = sandbox.job("capped")
    daemon = sandbox.write_helper("chatty_daemon.py")
    sandbox.ok("install", name, "--log-max-bytes", "10000", "--log-backups", "2", "--",
               "/usr/bin/python3", daemon, sandbox.path("hb"), "100", "0", "2000")
    log = sandbox.status(name)["stdout_log"]
    wait_for(lambda: os.path.exists(sandbox.path("hb")) and open(sandbox.path("hb")).read() == "2000", 30)
    wait_for(lambda: "line 1999 " in open(log).read(), 10)
    names = sorted(f for f in os.listdir(os.path.dirname(log)) if f.startswith(os.path.basename(log)))
    assert names == [os.path.basename(log), os.path.basename(log) + ".1", os.path.basename(log) + ".2"]


def test_a_full_log_disk_neither_blocks_the_daemon_nor_stops_the_supervisor(sandbox: Sandbox) -> None:
    if os.getuid() != 0:
        pytest.skip("needs root to mount a small tmpfs")
    mount = sandbox.mkdir("small-disk")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0755", "tmpfs", mount], check=True)
    try:
        os.chown(mount, sandbox.user.uid, sandbox.user.gid)
        name = sandbox.job("full")
        daemon = sandbox.write_helper("chatty_daemon.py")
        heartbeat = sandbox.path("hb")
        sandbox.ok("install", name, "--log-dir", mount, "--log-max-bytes", "0", "--",
                   "/usr/bin/python3", daemon, heartbeat, "200", "0.002")
        info = sandbox.status(name)
        wait_for(lambda: os.path.exists(info["stdout_log"]) and os.path.getsize(info["stdout_log"]) > 1000, 10)
        filler = os.path.join(mount, "filler")
        with open(filler, "wb") as f:
            try:
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
            except OSError:
                pass  # ENOSPC: the disk is full
        beat = int(open(heartbeat).read())
        time.sleep(2)
        assert int(open(heartbeat).read()) > beat + 100, "the daemon blocked on a full log disk"
        assert alive(info["supervisor_pid"]) and alive(info["pid"])
        size_full = os.path.getsize(info["stdout_log"])
        os.unlink(filler)
        wait_for(lambda: os.path.getsize(info["stdout_log"]) > size_full + 10000, 10,
                 what="writing to resume once space returned")
        numbers = [int(ln.split()[1]) for ln in open(info["stdout_log"], errors="replace") if ln.startswith("line ")]
        assert numbers == list(range(numbers[0], numbers[0] + len(numbers))), \
            "lines written during a short outage were lost"
        sandbox.ok("uninstall", name)
    finally:
        subprocess.run(["umount", "-l", mount])


def test_systemd_tmpfiles_clean_leaves_a_held_lock_alone(sandbox: Sandbox) -> None:
    if os.getuid() != 0 or not shutil.which("systemd-tmpfiles"):
        pytest.skip("needs root and systemd-tmpfiles")
    parent = sandbox.tmp_path("wstest-aged")
    os.mkdir(parent)
    os.chmod(parent, 0o1777)  # like /tmp
    name = sandbox.job("aged")
    marker = install_sleeper(sandbox, name, "--lock-dir", os.path.join(parent, "locks"))
    lock_path = sandbox.status(name)["lock_path"]
    inode = os.stat(lock_path).st_ino
    decoy = os.path.join(parent, "stale-file")
    with open(decoy, "w") as f:
        f.write("old\n")
    time.sleep(2.5)  # everything is now older than the 1 s age below; none older than an hour
    conf = sandbox.path("aggressive.conf")
    with open(conf, "w") as f:
        f.write(f"d {parent} 1777 root root 1s\n")
    proc = subprocess.run(["systemd-tmpfiles", "--clean", conf], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert not os.path.exists(decoy), "tmpfiles did not clean: the test proves nothing"
    assert os.stat(lock_path).st_ino == inode, "tmpfiles removed the held lock"
    sandbox.fire_tick(name)
    assert len(copies(sandbox, marker)) == 1


RACE_SCRIPT = """
import os, subprocess, sys
from watchdog_singleton import paths
from watchdog_singleton.job.model import JobStore
from watchdog_singleton.tick.launch import settle
from watchdog_singleton.lock.flock import FlockLock
from watchdog_singleton.state.store import StateStore

root = paths.state_dir()
job = JobStore(root).get(sys.argv[1])
states = StateStore(root)
lock = FlockLock(job.lock_dir, job.name)
assert lock.try_acquire()
cron_env = {"HOME": os.environ["HOME"], "LOGNAME": os.environ["LOGNAME"], "SHELL": "/bin/sh", "PATH": "/usr/bin:/bin"}


def race() -> None:
    # We have read the state (nobody runs) but not yet claimed: a /tmp cleaner deletes our lock
    # file, and cron's tick takes a fresh one, finds nobody either, and starts a copy.
    os.unlink(job.lock_path)
    subprocess.run(["/bin/sh", "-c", sys.argv[2]], env=cron_env, check=True)


print("went on" if settle(lock, job, states, before_claim=race) else "left")
"""


def test_a_lock_deleted_between_flock_and_claim_lets_only_one_launcher_on(sandbox: Sandbox) -> None:
    name = sandbox.job("raced")
    marker = install_sleeper(sandbox, name, "--no-start")
    proc = sandbox.run_as([sys.executable, "-c", RACE_SCRIPT, name, sandbox.tick_command(name)])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "left", "the first launcher went on beside the tick's copy"
    wait_for(lambda: copies(sandbox, marker), 10, what="the tick's copy")
    assert holds_for(lambda: len(copies(sandbox, marker)) == 1, 2.5)


def _run_through_a_stalling_log(sandbox: Sandbox, stall: float, chunks: int) -> tuple[int, float, float, bool]:
    """Run a fast writer whose stdout log is on a FUSE file system (bindfs) that we stop with
    SIGSTOP for `stall` seconds once the first 64 KiB arrived: the disk stalls. (A FIFO would be
    simpler, but a log path that holds a FIFO is refused.)

    Returns (bytes of the daemon's that reached the log, the writer's longest write(), its total
    time, whether the log holds a marker saying output was lost).
    """
    if not shutil.which("bindfs"):
        pytest.skip("needs bindfs (a FUSE file system) to stall a log disk")
    name = sandbox.job("stall")
    src, logs = sandbox.mkdir("stall-src"), sandbox.mkdir("stall-logs")
    fuse = subprocess.Popen(["bindfs", "-f", src, logs])
    try:
        wait_for(lambda: os.path.ismount(logs), 10, what="the bindfs mount")
        log = os.path.join(src, f"{name}.stdout.log")

        def size() -> int:
            try:
                return os.path.getsize(log)
            except OSError:
                return 0

        def stall_the_disk() -> None:
            if poll_until(lambda: size() >= 65536, 30, 0.005):
                fuse.send_signal(signal.SIGSTOP)
                try:
                    time.sleep(stall)  # the disk stalls
                finally:
                    fuse.send_signal(signal.SIGCONT)

        staller = threading.Thread(target=stall_the_disk)
        staller.start()
        report = sandbox.path("writer.report")
        writer = sandbox.write_helper("fast_writer.py")
        sandbox.ok("install", name, "--log-dir", logs, "--log-max-bytes", "0",
                   "--", "/usr/bin/python3", writer, str(chunks), report)
        staller.join(60)
        wait_for(lambda: os.path.exists(report), 20, what="the writer's report")
        worst, took = (float(x) for x in open(report).read().split())

        def settled() -> tuple[int, bool] | None:
            data = open(log, "rb").read()
            total, marked = data.count(b"x"), b"bytes of output lost" in data
            return (total, marked) if marked or total >= chunks * 65535 else None

        received, marked = poll_until(settled, 15, 0.05) or settled() or (size(), False)
        sandbox.ok("uninstall", name)
        return received, worst, took, marked
    finally:
        fuse.send_signal(signal.SIGCONT)
        subprocess.run(["umount", "-l", logs], check=False)
        fuse.kill()
        fuse.wait()


def test_a_brief_log_stall_loses_no_output(sandbox: Sandbox) -> None:
    chunks = 768  # 48 MiB: three times the 16 MiB the supervisor queues
    received, worst, took, marked = _run_through_a_stalling_log(sandbox, 0.3, chunks)
    assert received == chunks * 65535, f"{chunks * 65535 - received} bytes lost in a 0.3 s stall"
    assert not marked


def test_a_stuck_log_does_not_block_the_daemon_for_long(sandbox: Sandbox) -> None:
    received, worst, took, marked = _run_through_a_stalling_log(sandbox, 8.0, 768)
    assert worst < 2.0, f"a single write() of the daemon blocked {worst:.1f} s"
    assert took < 4.0, f"the daemon took {took:.1f} s to write 48 MiB while the log was stuck"
    assert marked and received < 768 * 65535, "output was dropped, and the log must say so"
