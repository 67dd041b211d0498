"""Our crontab lines tell the truth and never stand in the way: the launcher's shell half, cron.deny,
a stray ~/json.py in cron's working folder, lines commented out or removed by hand, the sparse
schedule warning. (The edits on a fake crontab(1): tests/unit/test_crontab_edits.py.)

The tests that edit a crontab by hand or compare it byte for byte run as their own user
(wstest3), whose crontab no other test touches."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import sys
from typing import Any, Iterator

import pytest
from conftest import (
    QUIET_SCHEDULE,
    TEST_USER,
    Sandbox,
    UnprivilegedUser,
    ensure_user,
    make_sandbox,
    pids_with_arg,
    wait_for,
)

from watchdog_singleton.cron import crontab
from watchdog_singleton.errors import LOCK_HELD
from watchdog_singleton.job.model import Job
from watchdog_singleton.lock.supfile import file_name
from watchdog_singleton.proc import procs

OWN_USER = f"{TEST_USER}3"


def marked(marker: str) -> list[str]:
    """A daemon whose command line carries `marker` for pids_with_arg."""
    return ["--", "/bin/sh", "-c", "sleep 1000; :", marker]
CONSOLE_SCRIPT = os.path.join(os.path.dirname(sys.executable), "watchdog-singleton")


def job(name: str = "web", schedule: str = "* * * * *") -> Job:
    return Job(name=name, command=["/bin/true"], workdir="/", schedule=schedule,
               lock_dir="/tmp/watchdog-singleton-1000")


def test_the_rendered_line_runs_the_launcher_from_root_only_when_the_lock_is_free(tmp_path: Any) -> None:
    marker = tmp_path / "launched"
    python = tmp_path / "python"
    python.write_text(f"#!/bin/sh\npwd > {marker}\necho \"$@\" >> {marker}\n")
    flock = tmp_path / "flock"
    python.chmod(0o755)
    j = job("x")
    j.lock_dir = str(tmp_path)
    open(j.lock_path, "w").close()
    me = os.getpid()  # the job's own supervisor, alive: a held lock needs no launcher (lock/supfile.py)
    (tmp_path / file_name("x")).write_text(f"{me} {procs.start_time(me)}\n")
    line = crontab.render(j, str(python), "/s", str(flock), "-I").decode()
    command = line.split(" ", 5)[5].rsplit(" #watchdog-singleton:", 1)[0].replace("\\%", "%")
    for code, launched in ((LOCK_HELD, False), (1, True), (0, True)):
        flock.write_text(f"#!/bin/sh\nexit {code}\n")
        flock.chmod(0o755)
        subprocess.run(["/bin/sh", "-c", command], cwd=str(tmp_path), check=True)
        assert marker.exists() is launched, code
        if launched:
            assert marker.read_text().splitlines() == ["/", "-I -m watchdog_singleton run --cron --state-dir /s x"]
            marker.unlink()


# -- as the test users, with the real crontab(1) -----------------------------------------------
@pytest.fixture
def own(test_user: UnprivilegedUser, request: pytest.FixtureRequest) -> Iterator[Sandbox]:
    """A sandbox of wstest3, whose crontab is this file's alone; emptied afterwards."""
    user = ensure_user(OWN_USER)
    box = make_sandbox(user, request.node.name)
    try:
        yield box
    finally:
        box.cleanup()
        subprocess.run(["crontab", "-u", user.name, "-r"], capture_output=True)


@contextlib.contextmanager
def cron_denied(user: UnprivilegedUser) -> Iterator[None]:
    """USER in /etc/cron.deny; the file is restored byte for byte (or removed) whatever happens."""
    if os.path.exists("/etc/cron.allow"):
        pytest.skip("/etc/cron.allow exists: cron.deny is not consulted")
    deny = "/etc/cron.deny"
    guard = os.open("/run/lock/watchdog-singleton-tests-cron.deny", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(guard, fcntl.LOCK_EX)  # another test session's fixture restores only after ours
    try:
        original = open(deny, "rb").read() if os.path.exists(deny) else None
        mode = os.stat(deny).st_mode & 0o7777 if original is not None else 0o644
        try:
            with open(deny, "ab") as f:
                f.write((b"" if not original or original.endswith(b"\n") else b"\n") + f"{user.name}\n".encode())
            yield
        finally:
            if original is None:
                os.unlink(deny)
            else:
                with open(deny, "wb") as f:
                    f.write(original)
                os.chmod(deny, mode)
    finally:
        os.close(guard)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X")
    except OSError:
        return False


def running_pid(box: Sandbox, name: str) -> int:
    return int(wait_for(lambda: box.status(name)["pid"], 15, what=f"{name} to run: {box.status(name)}"))


def test_lock_dir_gets_around_a_default_lock_folder_planted_by_another_user(own: Sandbox) -> None:
    planted = f"/tmp/watchdog-singleton-{own.user.uid}"
    aside = f"{planted}.aside-{own.tag}"
    if os.path.lexists(planted):
        os.rename(planted, aside)  # wstest3's own folder from an earlier test: put back afterwards
    os.mkdir(planted, 0o777)  # root's, i.e. someone else's
    try:
        name = own.job("around")
        locks = own.mkdir("locks")
        own.ok("install", name, "--lock-dir", locks, *marked(f"marker-{own.tag}"))
        running_pid(own, name)
        own.ok("stop", name)
        own.ok("start", name)
        own.ok("uninstall", name)
        assert b"#watchdog-singleton:" not in own.crontab()
        assert os.listdir(planted) == []
    finally:
        shutil.rmtree(planted)
        if os.path.lexists(aside):
            os.rename(aside, planted)


def test_a_lock_dir_that_cannot_be_created_is_refused_and_changes_nothing(own: Sandbox) -> None:
    own.set_crontab(b"# mine\n")
    name = own.job("badlock")
    proc = own.ws("install", name, "--lock-dir", "/nonexistent/x", "--", "/bin/sleep", "1000")
    assert proc.returncode == 2, proc
    assert proc.stderr.splitlines() == [proc.stderr.strip()] and "/nonexistent/x" in proc.stderr
    assert proc.stdout == ""
    assert own.crontab() == b"# mine\n"
    assert not os.path.exists(os.path.join(own.state_root, "jobs", f"{name}.json"))


def test_stop_and_uninstall_stop_the_daemon_when_cron_denies_the_user(own: Sandbox) -> None:
    stopped, removed = own.job("denied-stop"), own.job("denied-uninstall")
    for name in (stopped, removed):
        own.ok("install", name, *marked(f"marker-{name}"))
    pids = {name: running_pid(own, name) for name in (stopped, removed)}
    with cron_denied(own.user):
        proc = own.ws("stop", stopped)
        assert proc.returncode == 1, proc
        assert len(proc.stderr.splitlines()) == 1 and "crontab" in proc.stderr, proc.stderr
        assert not alive(pids[stopped])
        assert own.status(stopped)["enabled"] is False
        proc = own.ws("uninstall", removed)
        assert proc.returncode == 1, proc
        assert len(proc.stderr.splitlines()) == 1 and "crontab" in proc.stderr, proc.stderr
        assert not alive(pids[removed])
        assert not os.path.exists(os.path.join(own.state_root, "jobs", f"{removed}.json"))
        assert own.ws("status", removed).returncode == 4
    # Both lines are still there (the edits were refused); their ticks start nothing and print nothing.
    for name in (stopped, removed):
        own.fire_tick(name)
        assert pids_with_arg(f"marker-{name}", own.user.uid) == []


def fire_tick_in(box: Sandbox, name: str, home: str) -> None:
    """NAME's line run as cron runs it, with HOME (and so cron's working folder) at `home`."""
    env = {**box.cron_env(), "HOME": home}
    proc = subprocess.run(["/bin/sh", "-c", box.tick_command(name)], env=env, cwd=home, stdin=subprocess.DEVNULL,
                          capture_output=True, timeout=60, **box.user.popen_kwargs())
    assert proc.stdout + proc.stderr == b"", f"a tick printed something (cron would mail it): {proc}"


def test_a_json_py_in_crons_working_folder_does_not_break_the_launcher(own: Sandbox) -> None:
    # A home of its own: another test's tick must not meet these files in the shared test home.
    home = own.mkdir("home")
    for module in ("json", "dataclasses"):
        with open(os.path.join(home, f"{module}.py"), "w") as f:
            f.write(f"raise SystemExit('the stdlib {module} was shadowed')\n")
    name = own.job("shadow")
    env = own.env({"HOME": home})
    proc = own.run_as([CONSOLE_SCRIPT, "install", name, "--no-start", "--schedule", QUIET_SCHEDULE, "--", "/bin/sleep",
                       "1000"], env=env, cwd=home)
    assert proc.returncode == 0, proc
    fire_tick_in(own, name, home)
    pid = running_pid(own, name)
    own.ok("stop", name)
    assert not alive(pid)
    # `start` from that folder: its launcher runs from / too.
    proc = own.run_as([CONSOLE_SCRIPT, "start", name], env=env, cwd=home)
    assert proc.returncode == 0, proc
    running_pid(own, name)


def table_row(box: Sandbox, name: str) -> str:
    return next(line for line in box.ok("status").stdout.splitlines() if line.startswith(name + " "))


def test_a_hand_commented_line_shows_disabled_and_start_puts_a_working_line_back(own: Sandbox) -> None:
    name = own.job("commented")
    own.ok("install", name, "--no-start", *marked(f"marker-{own.tag}"))
    line = own.cron_line(name).encode()
    own.set_crontab(own.crontab().replace(line, b"# " + line))
    info_ = own.status(name)
    assert (info_["cron_entry"], info_["enabled"]) == ("disabled", False)
    assert "  disabled  " in table_row(own, name)
    own.ok("start", name)
    assert own.crontab().count(f"#watchdog-singleton:{name}".encode()) == 1
    assert own.cron_line(name).encode() == line
    running_pid(own, name)
    # Removed by hand while it runs: the table says so, not just the JSON.
    own.set_crontab(own.crontab().replace(line + b"\n", b""))
    assert "running (no cron line)" in table_row(own, name)


@pytest.mark.cron_ticks  # the default every-minute schedule is one of the cases; a tick only starts it early
def test_an_at_word_schedule_with_restart_always_warns_at_install(sandbox: Sandbox) -> None:
    name = sandbox.job("daily")
    proc = sandbox.ok("install", name, "--no-start", "--schedule", "@daily", "--", "/bin/sleep", "1000")
    assert ("warning: --restart always with schedule '@daily': the supervisor restarts it at once after every "
            "exit; for a job that should run once per due time use --periodic") in proc.stderr.splitlines()
    for args in (["--schedule", "* * * * *"], ["--schedule", "@daily", "--restart", "never"]):
        proc = sandbox.ok("install", name, "--no-start", *args, "--", "/bin/sleep", "1000")
        assert "--restart always" not in proc.stderr
    assert json.loads(sandbox.ws("status", name, "--json").stdout)["installed"]
