"""The farm against a second local user, found by trying it: `farm trace` of a work folder that
user planted is refused like every other farm command, and writes nothing there."""

from __future__ import annotations

import os

from conftest import Sandbox, UnprivilegedUser
from test_farm_safety import OTHER_USER, one_line, other_user, shared  # noqa: F401  (fixtures)


def test_farm_trace_refuses_a_work_folder_another_user_planted(
        sandbox: Sandbox, shared: str, other_user: UnprivilegedUser) -> None:  # noqa: F811
    listing = os.path.join(shared, "tasks.txt")
    with open(listing, "w") as f:
        f.write("true\n")
    os.chown(listing, sandbox.user.uid, sandbox.user.gid)
    workdir = listing + ".farm"
    os.mkdir(workdir, 0o777)
    os.chmod(workdir, 0o777)
    with open(os.path.join(workdir, "timeline.jsonl"), "w") as f:
        f.write('{"start": 1, "end": 2, "task": "planted", "command": "rm -rf ~"}\n')
    for path in (workdir, os.path.join(workdir, "timeline.jsonl")):
        os.chown(path, other_user.uid, other_user.gid)
    before = sorted(os.listdir(workdir))
    proc = sandbox.ws("farm", "trace", listing)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert f"{OTHER_USER} (uid {other_user.uid})" in one_line(proc)
    assert sorted(os.listdir(workdir)) == before
