"""End to end through the real cron daemon, as the unprivileged test user.

One tick serves several checks: the jobs are installed with --no-start together, then the real
cron daemon must start each of them within 70 s.
"""

from __future__ import annotations

import json
import os
import stat
import time
from typing import Any, Iterator, TypedDict

import pytest
from conftest import Sandbox, UnprivilegedUser, make_sandbox, wait_for

pytestmark = pytest.mark.cron

TRICKY_ARGS = ["two words", "it's", 'say "hi"', "100%", "%%d", "$HOME", "${PATH}", "#not-a-comment",
               "a # b", "*", "back\\slash", "tab\there", "`date`", "$(id)", ";", "&&", "", "-n"]


class CronStarted(TypedDict):
    box: Sandbox
    plain: str
    tricky: str
    pathy: str


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
    began = time.time()
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
    yield {"box": box, "plain": plain, "tricky": tricky, "pathy": pathy}
    box.cleanup()


def _record(box: Sandbox, name: str) -> dict[str, Any]:
    path = box.path(name + ".json")
    wait_for(lambda: os.path.exists(path), 75, interval=0.5, what=f"cron to start {name}")
    with open(path) as f:
        record = json.load(f)
    assert isinstance(record, dict), record
    return record


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


def test_tricky_arguments_reach_the_daemon_intact_through_cron(cron_started: CronStarted) -> None:
    from test_cron_e2e import TRICKY_ARGS

    record = _record(cron_started["box"], cron_started["tricky"])
    assert record["argv"] == TRICKY_ARGS


def test_program_found_through_install_time_path_runs_under_cron(cron_started: CronStarted) -> None:
    box = cron_started["box"]
    record = _record(box, cron_started["pathy"])
    assert record["argv"] == ["via-path"]
    assert record["env"]["PATH"].startswith(box.path("bin1"))


def test_cron_environment_is_the_install_time_one(cron_started: CronStarted) -> None:
    box = cron_started["box"]
    record = _record(box, cron_started["plain"])
    env = record["env"]
    assert env["HOME"] == box.user.home
    assert env["WATCHDOG_SINGLETON_JOB"] == cron_started["plain"]
    assert env["ARGV_OUT"].endswith(cron_started["plain"] + ".json")
    assert record["cwd"] == box.dir  # the folder install ran in
