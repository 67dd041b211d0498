"""A /tmp cleaner removes the private lock folder while a shared resident runs, and another user
makes a folder of that name before the resident can put it back. The resident serves on at that
path (it never creates anything in another user's folder), so no command can reach it: a command
on one of its jobs must say so in one line, with the one thing that helps (`kill PID`), not
"try again in a minute" after waiting for a SIGHUP that cannot help either."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time

from conftest import Sandbox, UnprivilegedUser, holds_for, pids_with_arg, wait_for
from sharedkit import residents
from test_adversary import attacker, one_line  # noqa: F401  (a fixture)
from test_shared_e2e import install_shared


def test_a_command_on_a_shared_job_whose_lock_folder_another_user_took_says_what_helps(
        sandbox: Sandbox, attacker: UnprivilegedUser) -> None:  # noqa: F811
    name, _ = install_shared(sandbox, "taken")
    info = sandbox.status(name)
    house = info["supervisor_pid"]
    folder = sandbox.lock_dir()
    sandbox.tmp_paths.append(folder)  # the attacker's, at the end
    shutil.rmtree(folder)  # the /tmp cleaner
    subprocess.run(["mkdir", "-m", "777", folder], check=True, cwd="/", **attacker.popen_kwargs())
    began = time.monotonic()
    proc = sandbox.ws("restart", name)
    assert proc.returncode == 1, proc.stderr
    line = one_line(proc)
    assert f"{folder} belongs to uid {attacker.uid}" in line, line
    assert f"`kill {house}`" in line and "try again in a minute" not in line, line
    assert time.monotonic() - began < 8, "it waited for an answer that cannot come (5 s, SIGHUP, 5 s more)"
    assert sandbox.status(name)["pid"] == info["pid"], "nothing changed"


def test_a_resident_restarted_by_its_anchor_creates_nothing_in_a_lock_folder_another_user_took(
        sandbox: Sandbox, attacker: UnprivilegedUser) -> None:  # noqa: F811
    """The anchor starts a new resident at once after a kill -9 of the old one; by then the lock
    folder may have been removed and made again by another user. The new resident must bind no
    socket and write no pid file there (that user could move, keep or replace them): it supervises
    the jobs it was handed and waits for a folder of ours."""
    name, marker = install_shared(sandbox, "anchored")
    daemon = sandbox.status(name)["pid"]
    [house] = residents(sandbox)
    folder = sandbox.lock_dir()
    sandbox.tmp_paths.append(folder)  # the attacker's, at the end
    shutil.rmtree(folder)  # the /tmp cleaner
    subprocess.run(["mkdir", "-m", "777", folder], check=True, cwd="/", **attacker.popen_kwargs())
    os.kill(house, signal.SIGKILL)
    wait_for(lambda: [p for p in residents(sandbox) if p != house], 20, what="the anchor's new resident")
    wait_for(lambda: "adopted running pid" in sandbox.ws("logs", name, "--stderr").stdout, 20,
             what="the new resident to take the job over")
    assert holds_for(lambda: not [entry for entry in os.listdir(folder)
                                  if os.lstat(os.path.join(folder, entry)).st_uid == sandbox.user.uid], 2), \
        os.listdir(folder)
    assert pids_with_arg(marker, sandbox.user.uid) == [daemon]
