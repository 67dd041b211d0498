"""status --watch and farm status --watch: views one after another off a terminal (bounded by
--count for scripts), redrawn in place on one, Ctrl-C exits 0."""

from __future__ import annotations

import os
import pty
import select
import signal
import subprocess
import sys
import time

import pytest
from conftest import Sandbox

from watchdog_singleton.commands.watch import watch
from watchdog_singleton.errors import UserError


def frames(output: str) -> list[str]:
    return [part for part in output.split("--- ")[1:]]


def test_status_watch_off_a_terminal_prints_count_views_one_after_another(sandbox: Sandbox) -> None:
    web = sandbox.job("web")
    sandbox.ok("install", web, "--no-start", "--", "/bin/sleep", "1000")
    started = time.monotonic()
    proc = sandbox.ws("status", "--watch", "0.3", "--count", "3")
    assert proc.returncode == 0 and proc.stderr == "", proc
    views = frames(proc.stdout)
    assert len(views) == 3, proc.stdout
    for view in views:
        assert "every 0.3s" in view and "NAME" in view and web in view, view
    assert time.monotonic() - started >= 0.6  # two waits between three views
    one = sandbox.ws("status", web, "--watch=0.2", "--count", "2")
    assert one.returncode == 3 and len(frames(one.stdout)) == 2, one  # the last view's exit code: not running


def test_status_watch_of_a_missing_job_or_a_bad_interval_is_one_line_and_exit_code(sandbox: Sandbox) -> None:
    missing = sandbox.ws("status", "nope", "--watch", "--count", "2")
    assert missing.returncode == 4 and missing.stdout == "" and missing.stderr.count("\n") == 1, missing
    for bad in (("--watch", "0"), ("--watch=-1",), ("--watch", "--count", "-1")):
        proc = sandbox.ws("status", *bad)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and proc.stdout == "", (bad, proc)


def test_farm_status_watch_shows_the_counts_again(sandbox: Sandbox) -> None:
    tasks = sandbox.path("tasks.txt")
    with open(tasks, "w") as fh:
        fh.write("true\nfalse\n")
    os.chown(tasks, sandbox.user.uid, sandbox.user.gid)
    assert sandbox.ws("farm", tasks, "--workers", "2").returncode == 1  # one task failed
    proc = sandbox.ws("farm", "status", tasks, "--watch", "0.2", "--count", "2")
    assert proc.returncode == 0, proc
    views = frames(proc.stdout)
    assert len(views) == 2 and all("1 finished" in v and "1 failed" in v for v in views), proc.stdout


def test_status_watch_on_a_terminal_redraws_in_place_and_ctrl_c_exits_0(sandbox: Sandbox) -> None:
    web = sandbox.job("web")
    sandbox.ok("install", web, "--no-start", "--", "/bin/sleep", "1000")
    master, slave = pty.openpty()
    os.chown(os.ttyname(slave), sandbox.user.uid, -1)
    proc = subprocess.Popen([sys.executable, "-m", "watchdog_singleton", "status", "--watch", "0.2"],
                            stdin=slave, stdout=slave, stderr=slave, env=sandbox.env({"TERM": "xterm-256color"}),
                            cwd=sandbox.dir, **sandbox.user.popen_kwargs())
    os.close(slave)
    seen = b""
    try:
        deadline = time.monotonic() + 30
        while seen.count(web.encode()) < 3 and time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    seen += os.read(master, 65536)
                except OSError:
                    break
        assert seen.count(web.encode()) >= 3, seen
        proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    assert b"\x1b[" in seen and b"--- " not in seen  # drawn with cursor moves, not printed one after another
    assert b"Traceback" not in seen


def test_a_later_error_is_shown_in_the_view_and_watching_goes_on() -> None:
    calls: list[int] = []
    shown: list[str] = []

    def frame(echo: object) -> int:
        calls.append(1)
        if len(calls) == 2:
            raise UserError("no such job: web", 4)
        echo("NAME  STATE")  # type: ignore[operator]
        return 0

    assert watch(frame, 1.0, 3, shown.append, interactive=False, sleep=lambda s: None) == 0
    assert len(shown) == 3 and "no such job: web" in shown[1] and "NAME" in shown[2]
    with pytest.raises(UserError):  # the first view's error is the command's own
        watch(lambda echo: (_ for _ in ()).throw(UserError("no such job: x", 4)), 1.0, 3, shown.append,
              interactive=False, sleep=lambda s: None)
