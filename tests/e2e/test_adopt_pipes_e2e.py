"""After a kill -9 of the anchor and then of the shared resident, a daemon that ignores SIGPIPE
(as Python's http.server does) keeps running, but its writes to stderr fail with EPIPE: nothing
reads its pipe. The tick's adoption (supervisor/adopt.py) opens that pipe again through
/proc/PID/fd/2, so its writes succeed again and reach the job's log. Real processes, as the test user."""

from __future__ import annotations

import os
import signal

from conftest import Sandbox, is_zombie, wait_for
from sharedkit import kill_anchor, residents
from test_house_adopt_e2e import NEVER

# Every 0.2 s: one line on stderr, and whether that write worked, in the record file.
DAEMON = """\
import os, signal, sys, time
signal.signal(signal.SIGPIPE, signal.SIG_IGN)
record, n = sys.argv[1], 0
while True:
    n += 1
    try:
        os.write(2, b"line %d\\n" % n)
        result = "ok"
    except OSError as exc:
        result = "failed %d" % exc.errno
    with open(record, "a") as f:
        f.write("%d %s\\n" % (n, result))
    time.sleep(0.2)
"""


def records(path: str) -> list[tuple[int, str]]:
    try:
        with open(path) as f:
            return [(int(n), result) for n, _, result in (line.rstrip("\n").partition(" ") for line in f)
                    if n.isdigit()]
    except OSError:
        return []


def install_writer(sandbox: Sandbox, base: str, *options: str) -> tuple[str, str, str]:
    """A job whose daemon is DAEMON: its name, its record file, its stderr log."""
    name = sandbox.job(base)
    script, record, logs = sandbox.path("daemon.py"), sandbox.path("record"), sandbox.mkdir("logs")
    with open(script, "w") as f:
        f.write(DAEMON)
    os.chown(logs, sandbox.user.uid, sandbox.user.gid)
    sandbox.ok("install", name, *options, "--schedule", NEVER, "--grace", "2", "--log-dir", logs, "--",
               "/usr/bin/python3", script, record)
    return name, record, sandbox.status(name)["stderr_log"]


def test_an_adopted_daemon_that_ignores_sigpipe_writes_into_its_log_again(sandbox: Sandbox) -> None:
    name, record, err_log = install_writer(sandbox, "pipes", "--shared")
    wait_for(lambda: "line 3\n" in read(err_log), 20, what="the daemon's lines in its log")
    [house] = residents(sandbox)
    daemon = sandbox.status(name)["pid"]
    kill_anchor(house)
    os.kill(house, signal.SIGKILL)
    wait_for(lambda: not os.path.exists(f"/proc/{house}") or is_zombie(house), 10, what="the resident to die")
    failing_since = writes_fail(record)

    sandbox.fire_tick(name)  # the lock is held by the daemon: the line finds the resident dead
    [adopter] = wait_for(lambda: residents(sandbox), 20, what="a new resident")
    assert adopter != house
    info = sandbox.status(name)
    assert info["pid"] == daemon and info["supervisor_pid"] == adopter, info

    written_again(record, err_log, failing_since)
    assert sandbox.status(name)["pid"] == daemon, "the daemon was restarted, not re-attached"
    assert "stopped" in sandbox.ok("stop", name).stdout


def writes_fail(record: str) -> int:
    """Wait until the daemon's writes fail with no reader; the number of its last failed line."""
    wait_for(lambda: any(r.startswith("failed") for _, r in records(record)[-3:]), 10,
             what="the daemon's writes to fail with no reader")
    return max(n for n, r in records(record) if r.startswith("failed"))


def written_again(record: str, err_log: str, failing_since: int) -> None:
    """Wait until the adopted daemon's writes succeed again and reach the job's log, as the
    adoption says there; what it wrote with no reader never does."""
    def ok_again() -> bool:
        later = [(n, r) for n, r in records(record) if n > failing_since]
        return len(later) >= 3 and all(r == "ok" for _, r in later[-3:])
    wait_for(ok_again, 10, what="the daemon's writes to succeed again")
    last_ok = max(n for n, r in records(record) if r == "ok")
    wait_for(lambda: f"line {last_ok}\n" in read(err_log), 10, what="its new lines in the job's log")
    assert "reading its stdout and stderr again" in read(err_log)
    assert f"line {failing_since}\n" not in read(err_log), "a line written with no reader reached the log"


def read(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except OSError:
        return ""
