"""What a first real user met in the first hour (issue 7), as the unprivileged test user with real
processes: late-forked leftovers, self-backgrounding programs, daemons that die at once, jobs
started from inside another job's tree, and copies left running by `uninstall --keep-running`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from conftest import QUIET_SCHEDULE, Sandbox, holds_for, is_zombie, pids_with_arg, wait_for


def alive(pid: int) -> bool:
    return os.path.exists(f"/proc/{pid}") and not is_zombie(pid)


def max_copies(box: Sandbox, marker: str, seconds: float, interval: float = 0.02) -> int:
    """The most processes with `marker` as an argument seen at once, sampled for `seconds`."""
    most = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        most = max(most, len(pids_with_arg(marker, box.user.uid)))
        time.sleep(interval)
    return most


def test_a_leftover_forked_late_never_runs_beside_the_next_copy(sandbox: Sandbox) -> None:
    name = sandbox.job("stray")
    # The reproduction: a grandchild that ignores SIGTERM forks `sleep 1003` half a
    # second into the grace wait, and the command itself exits at once.
    sandbox.ws("install", name, "--grace", "1", "--backoff-initial", "0.5", "--backoff-max", "0.5", "--",
               "/bin/sh", "-c", "sh -c 'trap \"\" TERM; sleep 0.5; sleep 1003 &' &")
    wait_for(lambda: pids_with_arg("1003", sandbox.user.uid), 15, what="the first stray sleep")
    assert max_copies(sandbox, "1003", 8.0) == 1
    sandbox.ok("uninstall", name)
    assert pids_with_arg("1003", sandbox.user.uid) == []


def test_forking_keeps_exactly_one_background_copy_and_replaces_it_when_killed(sandbox: Sandbox) -> None:
    name = sandbox.job("forker")
    # A classic double fork: the command exits 0 at once, its daemon runs on in the background.
    proc = sandbox.ws("install", name, "--forking", "--", "/bin/sh", "-c", "(setsid sleep 1004 &) ; exit 0")
    assert proc.returncode == 0, proc.stderr
    [daemon] = wait_for(lambda: pids_with_arg("1004", sandbox.user.uid), 10, what="the background copy")
    assert holds_for(lambda: pids_with_arg("1004", sandbox.user.uid) == [daemon], 2.5)
    info = sandbox.status(name)
    assert info["running"] and info["pid"] == daemon and info["phase"] == "running"
    os.kill(daemon, signal.SIGKILL)
    new = wait_for(lambda: [p for p in pids_with_arg("1004", sandbox.user.uid) if p != daemon], 10,
                   what="a new background copy")
    assert len(new) == 1
    assert max_copies(sandbox, "1004", 2.0) == 1
    sandbox.ok("stop", name)
    assert pids_with_arg("1004", sandbox.user.uid) == []


def test_without_forking_a_command_that_backgrounds_itself_gets_a_hint(sandbox: Sandbox) -> None:
    name = sandbox.job("bg")
    sandbox.ws("install", name, "--grace", "0.5", "--", "/bin/sh", "-c", "sleep 1005 &")
    hint = "if it daemonizes itself, install it with --forking or run it in the foreground"
    wait_for(lambda: hint in sandbox.status(name)["message"], 15, what="the hint in status")
    assert hint in sandbox.ok("logs", name, "--stderr", "-n", "50").stdout


def test_install_of_a_command_that_dies_at_once_exits_1_with_its_code(sandbox: Sandbox) -> None:
    name = sandbox.job("dies")
    proc = sandbox.ws("install", name, "--", "/bin/sh", "-c", "echo nope >&2; exit 7")
    assert proc.returncode == 1
    [line] = proc.stderr.strip().splitlines()
    assert "exited with code 7" in line and f"{name}.stderr.log" in line and "stays installed" in line
    assert f"#watchdog-singleton:{name}" in sandbox.cron_line(name)
    assert "running" not in proc.stdout


def test_start_says_who_holds_the_lock_when_an_orphan_does(sandbox: Sandbox) -> None:
    name = sandbox.job("held")
    sandbox.ok("install", name, "--no-start", "--", "/bin/sleep", "1006")  # the sandbox's quiet schedule: no tick
    lock = sandbox.status(name)["lock_path"]
    holder = subprocess.Popen(["flock", lock, "/bin/sleep", "1007"], env=sandbox.env(), cwd=sandbox.dir,
                              **sandbox.user.popen_kwargs())
    try:
        wait_for(lambda: pids_with_arg("1007", sandbox.user.uid), 10, what="the orphan holding the lock")
        proc = sandbox.ws("start", name)
        assert proc.returncode == 1
        assert "held by pid" in proc.stderr and "started" not in proc.stdout
        assert pids_with_arg("1006", sandbox.user.uid) == []
    finally:
        holder.kill()
        holder.wait()


def test_a_job_installed_from_inside_another_jobs_tree_survives_that_jobs_restart(sandbox: Sandbox) -> None:
    a, b = sandbox.job("outer"), sandbox.job("inner")
    done = sandbox.path("b-installed")
    ws = f"{sys.executable} -m watchdog_singleton"
    script = (f"[ -e {done} ] || {{ {ws} install {b} --schedule {QUIET_SCHEDULE} -- /bin/sleep 1009 "
              f"&& touch {done}; }}; exec /bin/sleep 1008")
    sandbox.ok("install", a, "--env", f"XDG_STATE_HOME={sandbox.state_home}", "--", "/bin/sh", "-c", script)
    wait_for(lambda: os.path.exists(done), 30, what="job B to be installed from inside job A")
    [b_daemon] = pids_with_arg("1009", sandbox.user.uid)
    b_supervisor = sandbox.status(b)["supervisor_pid"]
    for step in ("restart", "stop", "start"):
        sandbox.ok(step, a)
        assert alive(b_daemon) and alive(b_supervisor), f"job B died with job A's {step}"
    [a_daemon] = wait_for(lambda: pids_with_arg("1008", sandbox.user.uid), 10)
    os.kill(a_daemon, signal.SIGKILL)  # A crashes and its supervisor restarts it
    wait_for(lambda: [p for p in pids_with_arg("1008", sandbox.user.uid) if p != a_daemon], 10)
    assert alive(b_daemon) and alive(b_supervisor)


def test_install_after_uninstall_keep_running_replaces_the_old_command(sandbox: Sandbox) -> None:
    name = sandbox.job("kept")
    sandbox.ok("install", name, "--", "/bin/sleep", "1010")
    [old] = pids_with_arg("1010", sandbox.user.uid)
    sandbox.ok("uninstall", name, "--keep-running")
    proc = sandbox.ok("install", name, "--", "/bin/sleep", "1011")
    assert "stopped the running copy" in proc.stdout
    assert not alive(old)
    [new] = wait_for(lambda: pids_with_arg("1011", sandbox.user.uid), 10)
    assert sandbox.status(name)["pid"] == new


def test_install_after_uninstall_keep_running_adopts_the_same_command(sandbox: Sandbox) -> None:
    name = sandbox.job("adopted")
    sandbox.ok("install", name, "--", "/bin/sleep", "1012")
    [old] = pids_with_arg("1012", sandbox.user.uid)
    sandbox.ok("uninstall", name, "--keep-running")
    proc = sandbox.ok("install", name, "--", "/bin/sleep", "1012")
    assert "adopted" in proc.stdout
    assert pids_with_arg("1012", sandbox.user.uid) == [old]


def test_an_ad_hoc_row_goes_when_its_run_ends(sandbox: Sandbox) -> None:
    name = sandbox.job("once")
    assert sandbox.ws("run", name, "--", "/bin/true").returncode == 0
    assert sandbox.ws("status", name).returncode == 4
    assert name not in sandbox.ok("status").stdout


def test_a_state_folder_on_a_full_tmpfs_does_not_stop_a_restarting_job(sandbox: Sandbox) -> None:
    """The job's whole state folder on a 1 MiB tmpfs that fills up: restarts go on, nothing is
    left half-written, and the state is right again once space returns."""
    disk = sandbox.path("disk")
    os.mkdir(disk)
    env = sandbox.env({"XDG_STATE_HOME": disk})
    name = sandbox.job("fullstate")
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size=1m,mode=0700,uid={sandbox.user.uid}", "tmpfs", disk],
                   check=True)
    try:
        starts = sandbox.path("starts")
        sandbox.ok("install", name, "--log-dir", sandbox.mkdir("logs"), "--settle", "0", "--",
                   "/bin/sh", "-c", f"echo $$ >> {starts}; sleep 1.2; exit 1", env=env)
        wait_for(lambda: os.path.exists(starts), 10, what="the first run")
        filler = os.path.join(disk, "filler")
        subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=64k"], capture_output=True)  # ENOSPC ends it
        before = len(open(starts).read().split())
        wait_for(lambda: len(open(starts).read().split()) >= before + 3, 20, what="restarts on the full disk")
        run_dir = os.path.join(disk, "watchdog-singleton", os.uname().nodename, "run")
        assert not [f for f in os.listdir(run_dir) if f.endswith(".tmp")], "a half-written state file was left"
        tick = sandbox.fire_tick(name, wait=False)  # a tick while the disk is full prints nothing
        out, _ = tick.communicate(timeout=60)
        assert b"Traceback" not in out
        os.unlink(filler)
        log = os.path.join(sandbox.path("logs"), f"{name}.stderr.log")
        wait_for(lambda: "the state file is written again" in open(log).read(), 20, what="the state written again")
        assert "cannot write the state file" in open(log).read()
        info = json.loads(sandbox.ws("status", name, "--json", env=env).stdout)
        assert info["restarts"] >= before + 2 and info["supervisor_pid"], info
    finally:
        sandbox.ws("uninstall", name, env=env)
        try:  # the private lock folder this state folder recorded: cleanup reads only the sandbox's own
            with open(os.path.join(disk, "watchdog-singleton", os.uname().nodename, "lock-dir")) as f:
                sandbox.tmp_paths.append(f.read().strip())
        except OSError:
            pass
        subprocess.run(["umount", "-l", disk], check=False)


def test_install_refuses_a_fifo_or_a_foreign_file_at_the_log_path(sandbox: Sandbox) -> None:
    logs = sandbox.mkdir("shared-logs")
    before = sandbox.crontab()
    fifo_job, foreign_job = sandbox.job("fifo"), sandbox.job("foreign")
    os.mkfifo(os.path.join(logs, f"{fifo_job}.stdout.log"))
    os.chown(os.path.join(logs, f"{fifo_job}.stdout.log"), sandbox.user.uid, sandbox.user.gid)
    with open(os.path.join(logs, f"{foreign_job}.stderr.log"), "w") as f:
        f.write("root's file\n")  # created first by another user (root here)
    for name, what in ((fifo_job, "FIFO"), (foreign_job, "belongs to")):
        proc = sandbox.ws("install", name, "--log-dir", logs, "--", "/bin/sleep", "1017", timeout=30)
        assert proc.returncode == 2, (proc.returncode, proc.stderr)
        [line] = proc.stderr.strip().splitlines()
        assert what in line
    assert sandbox.crontab() == before
    assert pids_with_arg("1017", sandbox.user.uid) == []
