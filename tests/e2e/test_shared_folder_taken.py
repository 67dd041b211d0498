"""A /tmp cleaner removes the private lock folder while a shared resident runs, and another user
makes a folder of that name before the resident can put it back. The resident serves on at that
path (it never creates anything in another user's folder), so no command can reach it: a command
on one of its jobs must say so in one line, with the one thing that helps (`kill PID`), not
"try again in a minute" after waiting for a SIGHUP that cannot help either."""

from __future__ import annotations

import shutil
import subprocess
import time

from conftest import Sandbox, UnprivilegedUser
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
    assert time.monotonic() - began < 4, "it waited for an answer that cannot come"
    assert sandbox.status(name)["pid"] == info["pid"], "nothing changed"
