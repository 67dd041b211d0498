"""`uninstall --purge` removes NAME's log files and their rotated copies (`.1` ... `.N`) and
nothing else: not a file of ours that only starts with the log's name, and not another user's
file planted beside a log in a sticky folder (which it cannot remove: before, a traceback, and the
crontab line was left behind)."""

from __future__ import annotations

import os
import subprocess

from conftest import Sandbox, UnprivilegedUser
from test_adversary import attacker  # noqa: F401  (a fixture)


def test_purge_removes_the_rotated_logs_and_not_a_file_that_only_starts_like_them(sandbox: Sandbox) -> None:
    name = sandbox.job("purged")
    log = sandbox.path("out.log")
    sandbox.ok("install", name, "--no-start", "--stdout-log", log, "--", "sleep", "100")
    keep = sandbox.path("out.log.2023-archive.txt")
    for path in (log, log + ".1", log + ".12", keep):
        sandbox.run_as(["touch", path])
    sandbox.ok("uninstall", "--purge", name)
    assert not any(os.path.exists(p) for p in (log, log + ".1", log + ".12"))
    assert os.path.exists(keep), "purge removed a file of ours that is no rotated log"


def test_purge_passes_by_a_file_another_user_planted_in_a_sticky_folder(
        sandbox: Sandbox, attacker: UnprivilegedUser) -> None:  # noqa: F811
    shared = os.path.join("/tmp", f"ws-purge-{sandbox.tag}")
    os.mkdir(shared)
    os.chmod(shared, 0o1777)  # root's, sticky: like /tmp
    sandbox.tmp_paths.append(shared)
    name = sandbox.job("purged-sticky")
    log = os.path.join(shared, "job.log")
    sandbox.ok("install", name, "--no-start", "--stdout-log", log, "--", "sleep", "100")
    sandbox.run_as(["touch", log])
    subprocess.run(["touch", log + ".1"], check=True, cwd="/", **attacker.popen_kwargs())
    proc = sandbox.ws("uninstall", "--purge", name)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not os.path.exists(log) and os.path.exists(log + ".1")
    assert f"#watchdog-singleton:{name}".encode() not in sandbox.crontab()
