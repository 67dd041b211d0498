"""Input install can see is wrong before it changes anything: one line on stderr, exit 2, no
definition and no crontab line. Before, these two were found only by the first start: install
said so with exit 1 and left behind a job whose every tick failed the same way."""

from __future__ import annotations

import os
import subprocess

from conftest import Sandbox, UnprivilegedUser
from test_adversary import attacker, one_line  # noqa: F401  (a fixture)


def assert_nothing_installed(sandbox: Sandbox, name: str, crontab_before: bytes) -> None:
    assert sandbox.crontab() == crontab_before
    assert not os.path.exists(os.path.join(sandbox.state_root, "jobs", f"{name}.json"))


def test_install_refuses_a_working_folder_it_cannot_enter(sandbox: Sandbox) -> None:
    closed = sandbox.path("closed")
    os.makedirs(closed)
    os.chmod(closed, 0o700)  # root's: the test user cannot enter it
    name = sandbox.job("closed")
    before = sandbox.crontab()
    proc = sandbox.ws("install", name, "--workdir", closed, "--", "sleep", "100")
    assert proc.returncode == 2, proc.stderr
    assert "cannot enter working directory" in one_line(proc)
    assert_nothing_installed(sandbox, name, before)


def test_install_refuses_a_lock_file_another_user_planted(
        sandbox: Sandbox, attacker: UnprivilegedUser) -> None:  # noqa: F811
    """A --lock-dir the group may write: a symlink, a FIFO or a file of another user's at NAME.lock
    is refused at install, as a planted log file is, never followed nor waited on."""
    locks = sandbox.mkdir("group-locks")
    os.chmod(locks, 0o777)
    victim = sandbox.path("victim.txt")
    with open(victim, "w") as f:
        f.write("mine\n")
    plants = {"link": ["ln", "-s", victim], "fifo": ["mkfifo"], "file": ["touch"]}
    for kind, argv in plants.items():
        name = sandbox.job(f"planted-{kind}")
        lock = os.path.join(locks, f"{name}.lock")
        subprocess.run([*argv, lock], check=True, capture_output=True, cwd="/", **attacker.popen_kwargs())
        before = sandbox.crontab()
        proc = sandbox.ws("install", name, "--lock-dir", locks, "--", "sleep", "100")
        assert proc.returncode == 2, (kind, proc.stderr)
        assert f"lock file {lock} belongs to uid {attacker.uid}" in one_line(proc)
        assert_nothing_installed(sandbox, name, before)
    with open(victim) as f:
        assert f.read() == "mine\n"
