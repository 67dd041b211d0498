"""procs.holding_file names the processes that hold a lock file open, and every stop signals them
(proc/stop.py). The path is in a lock folder others may write: a symlink planted there must not
make a stop signal whatever of ours holds the file it points to."""

from __future__ import annotations

import os
import subprocess
from typing import Any

from watchdog_singleton.proc import procs


def holder_of(path: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(["sh", "-c", f'exec 3<>"{path}"; echo ready; exec sleep 300'],
                            stdout=subprocess.PIPE)


def test_holding_file_finds_a_holder_of_the_file_itself(tmp_path: Any) -> None:
    lock = str(tmp_path / "job.lock")
    proc = holder_of(lock)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        assert proc.pid in procs.holding_file(procs.scan(), lock)
    finally:
        proc.kill()
        proc.wait()


def test_holding_file_never_follows_a_symlink_at_the_lock_path(tmp_path: Any) -> None:
    bystander_file = str(tmp_path / "someone-elses.log")
    proc = holder_of(bystander_file)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        lock = str(tmp_path / "job.lock")
        os.symlink(bystander_file, lock)
        assert procs.holding_file(procs.scan(), lock) == set()
    finally:
        proc.kill()
        proc.wait()
