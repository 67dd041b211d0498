"""Our crontab lines as plain calls, on a fake crontab(1): a hand-commented line reads as off, edits
keep foreign bytes, the edit lock is private (and skipped where locks are not available), sparse
schedules, the STATE column. (On the real crontab(1), as users: tests/e2e/test_crontab.py.)"""

from __future__ import annotations

import errno
import os
import subprocess
import threading
from typing import Any

import pytest

from watchdog_singleton.commands.common import Context
from watchdog_singleton.commands.status import _state_word
from watchdog_singleton.cron import crontab
from watchdog_singleton.job.model import Job


def job(name: str = "web", schedule: str = "* * * * *") -> Job:
    return Job(name=name, command=["/bin/true"], workdir="/", schedule=schedule,
               lock_dir="/tmp/watchdog-singleton-1000")


@pytest.mark.parametrize("prefix,enabled", [(b"", True), (b"#disabled ", False), (b"#", False), (b"# ", False),
                                            (b"  # ", False), (b"\t#", False)])
def test_a_line_commented_out_by_hand_reads_as_disabled(prefix: bytes, enabled: bool) -> None:
    line = prefix + b"* * * * * cd /; exec /p -m watchdog_singleton run --cron x #watchdog-singleton:x"
    assert crontab.parse_entries(b"# mine\n" + line + b"\n")["x"].enabled is enabled


class FakeCrontab:
    """crontab(1) as a seam: -l prints `text`, - replaces it."""

    def __init__(self, text: bytes) -> None:
        self.text = text
        self.writes = 0

    def run(self, argv: list[str], input: bytes = b"", **_: Any) -> subprocess.CompletedProcess[bytes]:
        if argv[1] == "-l":
            return subprocess.CompletedProcess(argv, 0, self.text, b"")
        self.text, self.writes = input, self.writes + 1
        return subprocess.CompletedProcess(argv, 0, b"", b"")


def test_our_edits_leave_a_hand_commented_line_off_and_start_writes_a_fresh_one(tmp_path: Any) -> None:
    fresh = crontab.render(job("x"), "/p", "/s", None)
    commented = b"# " + fresh
    fake = FakeCrontab(b"# mine\n" + commented + b"\n")
    editor = crontab.CrontabEditor(crontab.CrontabIO("/bin/false", run=fake.run), str(tmp_path / "edit-lock"))
    assert editor.set_enabled("x", False) is True
    assert fake.writes == 0  # already off: not turned into "#disabled # ..."
    assert editor.set_enabled("x", True) is False  # not ours to uncomment: the caller writes a fresh line
    editor.set_entry("x", fresh)
    assert fake.text == b"# mine\n" + fresh + b"\n"
    assert crontab.parse_entries(fake.text)["x"].enabled


def test_the_edit_lock_lives_in_the_state_folder_and_is_private(tmp_path: Any) -> None:
    root = str(tmp_path / "state" / "host")
    fake = FakeCrontab(b"")
    ctx = Context.default()
    ctx.root, ctx.crontab_io = root, crontab.CrontabIO("/bin/false", run=fake.run)
    editor = ctx.editor()
    editor.set_entry("x", b"* * * * * true #watchdog-singleton:x")
    assert editor.lock_path == os.path.join(root, "crontab.edit-lock")
    assert os.stat(editor.lock_path).st_mode & 0o777 == 0o600
    assert os.stat(root).st_mode & 0o777 == 0o700


def test_an_edit_lock_on_a_file_system_without_locks_is_skipped_silently(tmp_path: Any,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import fasteners

    def no_locks(self: Any, *args: Any, **kw: Any) -> bool:
        try:
            raise OSError(errno.ENOLCK, "No locks available")
        except OSError:
            raise threading.ThreadError("Unable to acquire lock") from None

    monkeypatch.setattr(fasteners.InterProcessLock, "acquire", no_locks)
    fake = FakeCrontab(b"# mine\n")
    editor = crontab.CrontabEditor(crontab.CrontabIO("/bin/false", run=fake.run), str(tmp_path / "edit-lock"))
    editor.set_entry("x", b"* * * * * true #watchdog-singleton:x")
    assert fake.text == b"# mine\n* * * * * true #watchdog-singleton:x\n"


@pytest.mark.parametrize("schedule,sparse", [
    ("* * * * *", False), ("*/10 * * * *", False), ("*/5 9-17,18-23,0-8 * * *", False), ("* * * * 0-6", False),
    ("@daily", True), ("@reboot", False), ("0 3 * * *", True), ("*/15 * * * *", True), ("* 9-17 * * *", True),
    ("* * * * 1-5", True), ("* * 1 * *", True)])
def test_sparse_schedules_are_told_apart_from_dense_ones(schedule: str, sparse: bool) -> None:
    assert crontab.fires_sparsely(schedule) is sparse


def info(**kw: Any) -> dict[str, Any]:
    base = {"running": True, "phase": "running", "next_start_at": None, "installed": True, "enabled": True,
            "cron_entry": "enabled"}
    return {**base, **kw}


def test_the_state_column_says_when_a_running_job_has_no_line_or_a_line_that_is_off() -> None:
    assert _state_word(info()) == "running"
    assert _state_word(info(enabled=False, cron_entry="missing")) == "running (no cron line)"
    assert _state_word(info(enabled=False, cron_entry="disabled")) == "running (disabled)"
    assert _state_word(info(running=False, phase="stopped", enabled=False, cron_entry="disabled")) == "disabled"
    assert _state_word(info(running=False, phase="stopped", enabled=False, cron_entry="missing")) == \
        "stopped (no cron line)"
    assert _state_word(info(installed=False, enabled=False, cron_entry="missing")) == "running"  # ad hoc
