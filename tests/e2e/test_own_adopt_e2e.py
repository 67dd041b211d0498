"""After a kill -9 of a job's own supervisor (not shared), its daemon runs on holding the job's lock.
One that ignores SIGPIPE (as Python's http.server does) gets EPIPE on each write: nothing reads its
pipes. The job's crontab line finds the lock held and the supervisor named in its `PID START` file
dead, and runs the launcher, which becomes the job's supervisor adopting that daemon
(supervisor/adopt.py): the same pid, its writes reach its log again, `status` names the new
supervisor, and `stop` ends it. Real processes, as the test user."""

from __future__ import annotations

import os
import signal

from conftest import Sandbox, holds_for, is_zombie, pids_with_arg, wait_for
from test_adopt_pipes_e2e import install_writer, read, writes_fail, written_again
from test_house_adopt_e2e import NEVER


def gone(pid: int) -> bool:
    return not os.path.exists(f"/proc/{pid}") or is_zombie(pid)


def test_a_tick_after_kill_9_of_a_jobs_own_supervisor_adopts_its_daemon(sandbox: Sandbox) -> None:
    name, record, err_log = install_writer(sandbox, "own")
    info = sandbox.status(name)
    daemon, old = info["pid"], info["supervisor_pid"]
    wait_for(lambda: "line 3\n" in read(err_log), 20, what="the daemon's lines in its log")

    # While the supervisor lives, a tick leaves in the shell: no second supervisor, nothing adopted.
    sandbox.fire_tick(name)
    assert sandbox.status(name)["supervisor_pid"] == old

    os.kill(old, signal.SIGKILL)
    wait_for(lambda: gone(old), 10, what="the supervisor to die")
    failing_since = writes_fail(record)
    assert sandbox.status(name)["supervisor"] == "gone"

    sandbox.fire_tick(name)  # the daemon holds the lock: the line finds the supervisor dead
    info = wait_for(lambda: (lambda i: i if i["supervisor_pid"] not in (None, old) and i["running"] else None)(
        sandbox.status(name)), 20, what="a new supervisor")
    adopter = info["supervisor_pid"]
    assert info["pid"] == daemon and info["supervisor"] == "" and info["phase"] == "running", info

    written_again(record, err_log, failing_since)
    assert f"adopted running pid {daemon}: its supervisor (pid {old}) died" in read(err_log)

    # The new supervisor's file names it: the next tick leaves in the shell, adopting nothing twice.
    sandbox.fire_tick(name)
    assert holds_for(lambda: sandbox.status(name)["supervisor_pid"] == adopter, 0.5)
    assert sandbox.status(name)["pid"] == daemon, "the daemon was restarted, not adopted"

    assert "stopped" in sandbox.ok("stop", name).stdout
    wait_for(lambda: gone(daemon) and gone(adopter), 10, what="the adopted daemon and its supervisor to end")
    info = sandbox.status(name)
    assert not info["running"] and info["pid"] is None, info


def start_time(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(") ", 1)[1].split()[19]


def install_sleeper(sandbox: Sandbox, base: str) -> tuple[str, int, int, str]:
    """A job whose daemon sleeps: its name, daemon, supervisor, and its supervisor file's path."""
    name = sandbox.job(base)
    sandbox.ok("install", name, "--schedule", NEVER, "--grace", "2", "--",
               "/usr/bin/python3", "-c", "import time; time.sleep(10**6)", f"marker-{name}")
    info = sandbox.status(name)
    return name, info["pid"], info["supervisor_pid"], os.path.join(sandbox.lock_dir(), f".sup.{name}.pid")


def test_a_missing_supervisor_file_is_written_by_the_next_tick_for_the_live_supervisor(sandbox: Sandbox) -> None:
    """As for a supervisor of an older version, which keeps none: one tick runs the launcher, which
    writes the file for the live supervisor on record; the ticks after it leave in the shell."""
    name, daemon, supervisor, path = install_sleeper(sandbox, "nofile")
    with open(path) as f:  # PID START FD: its descriptor on this very file (the line's cheap test)
        fd = int(f.read().split()[2])
    assert os.path.samefile(f"/proc/{supervisor}/fd/{fd}", path)
    assert os.stat(path).st_uid == sandbox.user.uid and os.stat(path).st_mode & 0o777 == 0o600
    os.unlink(path)
    sandbox.fire_tick(name)
    with open(path) as f:  # written by the launcher for it: no descriptor, the start time decides
        assert f.read() == f"{supervisor} {start_time(supervisor)}\n"
    written = os.stat(path).st_mtime_ns
    sandbox.fire_tick(name)
    assert os.stat(path).st_mtime_ns == written, "a tick ran the launcher with its supervisor on file alive"
    info = sandbox.status(name)
    assert info["supervisor_pid"] == supervisor and info["pid"] == daemon


def tick_output(sandbox: Sandbox, name: str) -> str:
    proc = sandbox.fire_tick(name, wait=False)
    out, _ = proc.communicate(timeout=60)
    return out.decode(errors="replace")


def test_a_planted_supervisor_file_is_never_trusted_nor_used(sandbox: Sandbox) -> None:
    """A symlink (to a file naming the live supervisor), then a file of another user: the line does
    not take either for a live supervisor, and the launcher will not use them: while the supervisor
    lives it leaves quietly; once it is killed it adopts nothing and says why, in one line."""
    name, daemon, supervisor, path = install_sleeper(sandbox, "planted")
    with open(path) as f:
        line = f.read()
    decoy = sandbox.path("decoy")
    with open(decoy, "w") as f:
        f.write(line)
    os.chown(decoy, sandbox.user.uid, sandbox.user.gid)
    os.unlink(path)
    os.symlink(decoy, path)
    os.lchown(path, sandbox.user.uid, sandbox.user.gid)
    assert tick_output(sandbox, name) == ""  # the launcher found the supervisor alive: nothing to say
    assert sandbox.status(name)["supervisor_pid"] == supervisor

    os.kill(supervisor, signal.SIGKILL)
    wait_for(lambda: gone(supervisor), 10, what="the supervisor to die")
    said = tick_output(sandbox, name).splitlines()
    assert len(said) == 1 and path in said[0] and said[0].startswith("watchdog-singleton: "), said
    os.unlink(path)
    with open(path, "w") as f:
        f.write(line)
    os.chown(path, 65534, 65534)  # nobody's
    said = tick_output(sandbox, name).splitlines()
    assert len(said) == 1 and "belongs to uid 65534" in said[0], said
    info = sandbox.status(name)
    assert info["pid"] == daemon and info["supervisor"] == "gone", info
    assert "stopped" in sandbox.ok("stop", name).stdout
    wait_for(lambda: gone(daemon), 10, what="the daemon to end")


def test_restart_and_uninstall_of_an_adopted_job_end_its_whole_tree(sandbox: Sandbox) -> None:
    name, daemon, supervisor, _ = install_sleeper(sandbox, "again")
    marker = f"marker-{name}"
    os.kill(supervisor, signal.SIGKILL)
    wait_for(lambda: gone(supervisor), 10, what="the supervisor to die")
    sandbox.fire_tick(name)
    info = wait_for(lambda: (lambda i: i if i["supervisor_pid"] not in (None, supervisor) else None)(
        sandbox.status(name)), 20, what="a new supervisor")
    assert info["pid"] == daemon and info["running"], info
    adopter = info["supervisor_pid"]

    sandbox.ok("restart", name)
    wait_for(lambda: gone(daemon) and gone(adopter), 10, what="the adopted daemon and its supervisor to end")
    info = sandbox.status(name)
    assert info["running"] and info["pid"] != daemon and info["supervisor_pid"] not in (None, adopter), info
    assert pids_with_arg(marker, sandbox.user.uid) == [info["pid"]]

    sandbox.ok("uninstall", name)
    assert pids_with_arg(marker, sandbox.user.uid) == []
    assert sandbox.run_as(["flock", "-n", info["lock_path"], "true"]).returncode == 0, "its lock is still held"
