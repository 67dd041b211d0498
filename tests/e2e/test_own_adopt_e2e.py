"""After a kill -9 of a job's own supervisor (not shared), its daemon runs on holding the job's lock.
One that ignores SIGPIPE (as Python's http.server does) gets EPIPE on each write: nothing reads its
pipes. The job's crontab line finds the lock held and the supervisor named in its `PID START` file
dead, and runs the launcher, which becomes the job's supervisor adopting that daemon
(supervisor/adopt.py): the same pid, its writes reach its log again, `status` names the new
supervisor, and `stop` ends it. Real processes, as the test user."""

from __future__ import annotations

import os
import signal

from conftest import Sandbox, holds_for, is_zombie, wait_for
from test_adopt_pipes_e2e import DAEMON, read, records
from test_house_adopt_e2e import NEVER


def gone(pid: int) -> bool:
    return not os.path.exists(f"/proc/{pid}") or is_zombie(pid)


def test_a_tick_after_kill_9_of_a_jobs_own_supervisor_adopts_its_daemon(sandbox: Sandbox) -> None:
    name = sandbox.job("own")
    script, record, logs = sandbox.path("daemon.py"), sandbox.path("record"), sandbox.mkdir("logs")
    with open(script, "w") as f:
        f.write(DAEMON)
    os.chown(logs, sandbox.user.uid, sandbox.user.gid)
    sandbox.ok("install", name, "--schedule", NEVER, "--grace", "2", "--log-dir", logs, "--",
               "/usr/bin/python3", script, record)
    info = sandbox.status(name)
    err_log, daemon, old = info["stderr_log"], info["pid"], info["supervisor_pid"]
    wait_for(lambda: "line 3\n" in read(err_log), 20, what="the daemon's lines in its log")

    # While the supervisor lives, a tick leaves in the shell: no second supervisor, nothing adopted.
    sandbox.fire_tick(name)
    assert sandbox.status(name)["supervisor_pid"] == old

    os.kill(old, signal.SIGKILL)
    wait_for(lambda: gone(old), 10, what="the supervisor to die")
    wait_for(lambda: any(r.startswith("failed") for _, r in records(record)[-3:]), 10,
             what="the daemon's writes to fail with no reader")
    failing_since = max(n for n, r in records(record) if r.startswith("failed"))
    assert sandbox.status(name)["supervisor"] == "gone"

    sandbox.fire_tick(name)  # the daemon holds the lock: the line finds the supervisor dead
    info = wait_for(lambda: (lambda i: i if i["supervisor_pid"] not in (None, old) and i["running"] else None)(
        sandbox.status(name)), 20, what="a new supervisor")
    adopter = info["supervisor_pid"]
    assert info["pid"] == daemon and info["supervisor"] == "" and info["phase"] == "running", info

    def written_again() -> bool:
        later = [(n, r) for n, r in records(record) if n > failing_since]
        return len(later) >= 3 and all(r == "ok" for _, r in later[-3:])
    wait_for(written_again, 10, what="the daemon's writes to succeed again")
    last_ok = max(n for n, r in records(record) if r == "ok")
    wait_for(lambda: f"line {last_ok}\n" in read(err_log), 10, what="its new lines in the job's log")
    assert "reading its stdout and stderr again" in read(err_log)
    assert f"adopted running pid {daemon}: its supervisor (pid {old}) died" in read(err_log)

    # The new supervisor's file names it: the next tick leaves in the shell, adopting nothing twice.
    sandbox.fire_tick(name)
    assert holds_for(lambda: sandbox.status(name)["supervisor_pid"] == adopter, 0.5)
    assert sandbox.status(name)["pid"] == daemon, "the daemon was restarted, not adopted"

    assert "stopped" in sandbox.ok("stop", name).stdout
    wait_for(lambda: gone(daemon) and gone(adopter), 10, what="the adopted daemon and its supervisor to end")
    info = sandbox.status(name)
    assert not info["running"] and info["pid"] is None, info
