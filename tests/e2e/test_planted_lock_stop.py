"""`stop` and `uninstall` also stop whatever holds NAME's lock file (orphans of a SIGKILLed
supervisor). In a lock folder others may write, another user can put a symlink at NAME.lock that
points to a file some other process of ours holds open: that process must not be stopped."""

from __future__ import annotations

import os
import signal
import subprocess

from conftest import Sandbox, UnprivilegedUser, wait_for
from test_adversary import attacker  # noqa: F401  (a fixture)


def test_uninstall_never_stops_a_process_of_ours_a_planted_lock_symlink_points_at(
        sandbox: Sandbox, attacker: UnprivilegedUser) -> None:  # noqa: F811
    locks = sandbox.mkdir("group-locks")
    os.chmod(locks, 0o777)
    held = sandbox.path("held-by-bystander.log")
    bystander = subprocess.Popen(["sh", "-c", f'exec 3>>"{held}"; exec sleep 300'], cwd="/",
                                 start_new_session=True, **sandbox.user.popen_kwargs())
    try:
        wait_for(lambda: os.path.exists(held), 10, what="the bystander to open its file")
        name = sandbox.job("planted-stop")
        sandbox.ok("install", name, "--no-start", "--lock-dir", locks, "--", "sleep", "100")
        subprocess.run(["ln", "-s", held, os.path.join(locks, f"{name}.lock")], check=True, cwd="/",
                       **attacker.popen_kwargs())
        sandbox.ok("uninstall", name)
        assert bystander.poll() is None, "uninstall stopped a process that only held the file a planted symlink names"
    finally:
        if bystander.poll() is None:
            os.killpg(bystander.pid, signal.SIGKILL)
            bystander.wait()
