"""Another local user is an adversary: what we read or run must be ours and private, or refused,
and nothing another user plants (a file, a symlink, a FIFO, a lock) runs code as us, reads our
files for them, or keeps a job down without a word.

The victim is the test user; the attacker is a second unprivileged user who plants things where
the victim looks: a shared folder anyone may create in (sticky, like /tmp) or one the group shares.
"""

from __future__ import annotations

import os
import signal
import subprocess
from typing import Iterator

import pytest
from conftest import TEST_USER, Sandbox, UnprivilegedUser, ensure_user, is_locked, pids_with_arg, wait_for

ATTACKER = f"{TEST_USER}2"


@pytest.fixture
def attacker(test_user: UnprivilegedUser) -> Iterator[UnprivilegedUser]:
    user = ensure_user(ATTACKER)
    yield user
    subprocess.run(["crontab", "-u", user.name, "-r"], capture_output=True)


@pytest.fixture
def shared(sandbox: Sandbox) -> str:
    """A folder everyone may create in (sticky), like /tmp or a project's scratch."""
    folder = sandbox.mkdir("shared")
    os.chmod(folder, 0o1777)
    return folder


def as_user(user: UnprivilegedUser, argv: list[str]) -> subprocess.CompletedProcess[str]:
    """`argv` run as `user` (the attacker planting something), checked."""
    return subprocess.run(argv, capture_output=True, text=True, check=True, timeout=60, cwd="/",
                          **user.popen_kwargs())


def one_line(proc: subprocess.CompletedProcess[str]) -> str:
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("watchdog-singleton: "), proc.stderr
    return lines[0]


# -- apply FILE runs the file's commands as us, from cron, for good ---------------------------

@pytest.mark.parametrize("how", ["theirs", "writable-by-all", "symlink-to-theirs"])
def test_apply_refuses_a_job_file_another_user_wrote_or_can_write(
        sandbox: Sandbox, shared: str, attacker: UnprivilegedUser, how: str) -> None:
    name = sandbox.job("planted")
    text = f'[jobs.{name}]\ncommand = ["/usr/bin/python3", "-c", "import time; time.sleep(10**6)", "m-{name}"]\n'
    planted = os.path.join(shared, "their.toml")
    path = os.path.join(shared, "jobs.toml")
    with open(planted if how != "writable-by-all" else path, "w") as f:
        f.write(text)
    if how == "writable-by-all":
        os.chown(path, sandbox.user.uid, sandbox.user.gid)
        os.chmod(path, 0o666)  # the victim's own file, but anyone may rewrite it
    else:
        os.chown(planted, attacker.uid, attacker.gid)
        os.chmod(planted, 0o644)
        if how == "symlink-to-theirs":  # not sticky: the kernel's protected_symlinks would refuse it first
            os.chmod(shared, 0o777)
            as_user(attacker, ["ln", "-s", planted, path])
        else:
            path = planted
    before = sandbox.crontab()
    proc = sandbox.ws("apply", path, timeout=60)
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    line = one_line(proc)
    assert "refusing" in line and path in line, line
    assert sandbox.crontab() == before
    assert pids_with_arg(f"m-{name}", sandbox.user.uid) == []


# -- the failure notifier, with the job's logs in a folder the group shares -------------------

NOTIFY = """
import json, os, sys
from watchdog_singleton.job import notify
payload = json.loads(sys.argv[1])
if sys.argv[2] == "mail":
    sys.stdout.write(notify.mail_text(payload, "host", 0.0).decode())
else:
    env = notify.hook_env(dict(os.environ), payload, "/tmp/ws-adversary-test.lock")
    print(notify.deliver(payload, env, timeout=5.0))
"""


def notifier(sandbox: Sandbox, payload: dict[str, object], what: str) -> subprocess.CompletedProcess[str]:
    import json
    import sys

    return sandbox.run_as([sys.executable, "-c", NOTIFY, json.dumps(payload), what], timeout=30)


@pytest.fixture
def group_logs(sandbox: Sandbox) -> str:
    """A log folder others may write and that is not sticky (a group's project folder): they can
    rename the victim's log away and put something else at its path."""
    folder = sandbox.mkdir("group-logs")
    os.chmod(folder, 0o777)
    return folder


def test_the_failure_mail_never_quotes_a_file_a_symlink_at_the_logs_path_points_to(
        sandbox: Sandbox, group_logs: str, attacker: UnprivilegedUser) -> None:
    secret = sandbox.path("id_secret")
    with open(secret, "w") as f:
        f.write("-----BEGIN PRIVATE KEY-----\nvictim-only\n")
    os.chown(secret, sandbox.user.uid, sandbox.user.gid)
    os.chmod(secret, 0o600)
    log = os.path.join(group_logs, "web.stderr.log")
    as_user(attacker, ["ln", "-s", secret, log])
    payload = {"name": "web", "event": "backoff", "code": 1, "argv": [], "mail": "team@example.org",
               "stderr_log": log, "command": ["/bin/true"], "every": 3600.0}
    proc = notifier(sandbox, payload, "mail")
    assert proc.returncode == 0, proc.stderr
    assert "victim-only" not in proc.stdout and "PRIVATE KEY" not in proc.stdout, proc.stdout


@pytest.mark.parametrize("plant", ["symlink", "fifo"])
def test_the_hook_never_writes_through_a_planted_symlink_nor_hangs_on_a_planted_fifo(
        sandbox: Sandbox, group_logs: str, attacker: UnprivilegedUser, plant: str) -> None:
    target = sandbox.path("profile")
    with open(target, "w") as f:
        f.write("# the victim's own file\n")
    os.chown(target, sandbox.user.uid, sandbox.user.gid)
    log = os.path.join(group_logs, "web.stderr.log")
    as_user(attacker, ["ln", "-s", target, log] if plant == "symlink" else ["mkfifo", "-m", "0666", log])
    payload = {"name": "web", "event": "run-failed", "code": 1, "argv": ["/bin/echo", "hook-said-this"],
               "stderr_log": log}
    proc = notifier(sandbox, payload, "hook")  # run_as's timeout: a notifier stuck on the FIFO fails here
    assert proc.returncode == 0, proc.stderr
    assert "hook /bin/echo" in proc.stdout, proc.stdout
    with open(target) as f:
        assert f.read() == "# the victim's own file\n"


# -- keep down: a lock file another user planted in a lock folder the group shares -------------

def test_a_lock_file_another_user_planted_and_holds_is_never_taken_for_a_running_copy(
        sandbox: Sandbox, attacker: UnprivilegedUser) -> None:
    """In a --lock-dir others may write, another user can make NAME.lock first: the job cannot start
    (the price of such a folder), but each tick says why instead of exiting 0 in silence, as if a
    copy of NAME held the lock."""
    locks = sandbox.mkdir("group-locks")
    os.chmod(locks, 0o777)
    name = sandbox.job("held")
    lock = os.path.join(locks, f"{name}.lock")
    # Planted after install (which refuses a lock file planted before it, tests/e2e/test_install_refusals.py).
    install = sandbox.ws("install", name, "--no-start", "--lock-dir", locks, "--", "/usr/bin/python3", "-c",
                         "import time; time.sleep(10**6)", f"m-{name}")
    assert install.returncode == 0, install.stderr
    holder = subprocess.Popen(["flock", "-n", lock, "sleep", "300"], cwd="/", stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True, **attacker.popen_kwargs())
    try:
        wait_for(lambda: is_locked(lock), 10, what="the planted lock to be held")
        tick = sandbox.fire_tick(name, wait=False)
        out, _ = tick.communicate(timeout=60)
        text = out.decode()
        assert text.strip(), "a tick that cannot start the job exited in silence (cron mails nothing)"
        assert f"lock file {lock} belongs to uid {attacker.uid}" in text, text
        assert pids_with_arg(f"m-{name}", sandbox.user.uid) == []
    finally:
        os.killpg(holder.pid, signal.SIGKILL)  # flock and its sleep
        holder.wait()


# -- export --into writes where a symlink another user planted points ------------------------

def test_export_into_refuses_a_symlink_another_user_planted(sandbox: Sandbox, attacker: UnprivilegedUser) -> None:
    folder = sandbox.mkdir("project")
    os.chmod(folder, 0o777)  # a group's folder, not sticky: protected_symlinks does not apply
    target = sandbox.path("chosen-by-them")
    path = os.path.join(folder, "jobs.toml")
    as_user(attacker, ["ln", "-s", target, path])
    proc = sandbox.ws("export", "--into", path)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    line = one_line(proc)
    assert path in line and "symlink" in line and f"uid {attacker.uid}" in line, line
    assert not os.path.lexists(target)


@pytest.mark.parametrize("plant", ["symlink", "fifo"])
def test_logs_never_shows_a_file_a_planted_symlink_points_to_nor_hangs_on_a_planted_fifo(
        sandbox: Sandbox, group_logs: str, attacker: UnprivilegedUser, plant: str) -> None:
    secret = sandbox.path("id_secret")
    with open(secret, "w") as f:
        f.write("victim-only\n")
    os.chown(secret, sandbox.user.uid, sandbox.user.gid)
    os.chmod(secret, 0o600)
    name = sandbox.job("planted")
    sandbox.ok("install", name, "--no-start", "--schedule", "0 0 1 1 *", "--log-dir", group_logs,
               "--", "/bin/sleep", "1041")
    log = sandbox.status(name)["stdout_log"]
    assert os.path.dirname(log) == group_logs and not os.path.lexists(log)
    as_user(attacker, ["ln", "-s", secret, log] if plant == "symlink" else ["mkfifo", "-m", "0666", log])
    proc = sandbox.ws("logs", name)  # the sandbox's timeout: a `logs` stuck on the FIFO fails here
    assert proc.returncode == 2 and "victim-only" not in proc.stdout, (proc.stdout, proc.stderr)
    assert ("symlink" if plant == "symlink" else "FIFO") in one_line(proc)


def test_another_users_lock_in_a_shared_tmp_never_blocks_a_pytaskfarmer_takeover(
        sandbox: Sandbox, shared: str, attacker: UnprivilegedUser, monkeypatch: pytest.MonkeyPatch) -> None:
    import hashlib

    from watchdog_singleton.farm.pytaskfarmer import still_running

    folder = sandbox.mkdir("campaign")
    lock = os.path.join(shared, hashlib.md5(os.path.abspath(folder).encode()).hexdigest() + "_lock")
    holder = subprocess.Popen(["flock", lock, "sleep", "1043"], start_new_session=True, **attacker.popen_kwargs())
    try:
        wait_for(lambda: is_locked(lock), 10, what="the attacker's flock")
        monkeypatch.setenv("TMP", shared)
        assert not still_running(folder)
    finally:
        os.killpg(holder.pid, signal.SIGKILL)
        holder.wait()
