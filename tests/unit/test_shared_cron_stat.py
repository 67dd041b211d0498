"""The shared job's crontab line reads the resident's /proc/PID/stat with shell builtins: a process
name (comm) with spaces and parentheses must not shift the fields it reads, and only a process of
ours counts. The line's own snippet runs under sh, against a folder standing in for /proc."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from watchdog_singleton.cron.crontab import shared_resident_lives
from watchdog_singleton.job.model import Job
from watchdog_singleton.supervisor.housewire import pid_path

PID, START = 4242, 987654


def stat_line(comm: str, state: str = "S", start: int = START) -> str:
    # Fields 4..21 are numbers here; field 22 is the start time.
    return f"{PID} ({comm}) {state} " + " ".join(str(n) for n in range(1, 19)) + f" {start} 20 21 22\n"


def lives(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stat: str, owner: int | None = None) -> bool:
    locks, root, proc = tmp_path / "locks", tmp_path / "state", tmp_path / "proc"
    for folder in (locks, root, proc / str(PID)):
        folder.mkdir(parents=True)
    monkeypatch.setenv("WATCHDOG_SINGLETON_LOCK_DIR", str(locks))
    job = Job(name="web", command=["/bin/true"], workdir="/", lock_dir=str(locks), shared=True)
    Path(pid_path(str(locks), str(root))).write_text(f"{PID} {START}\n")
    (proc / str(PID) / "stat").write_text(stat)
    if owner is not None:
        os.chown(proc / str(PID), owner, owner)
    snippet = shared_resident_lives(job, str(root))
    assert snippet.count('/proc/"$p"') == 3  # the descriptor, the stat file, and the owner test
    snippet = snippet.replace('/proc/"$p"', f'{proc}/"$p"')
    run = subprocess.run(["sh", "-c", f'd="$1"; {snippet}', "sh", str(locks)], capture_output=True)
    return run.returncode == 0


@pytest.mark.parametrize("comm", ["daemon", "a b", "a) b (c", ") S 1 2", "x) Z 9"])
def test_a_live_resident_is_seen_whatever_its_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   comm: str) -> None:
    assert lives(tmp_path, monkeypatch, stat_line(comm))


def test_a_name_shaped_to_shift_the_start_time_into_place_is_not_taken_for_the_resident(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Split on spaces, field 22 would be START and field 3 "x": a reused pid posing as the resident.
    fake = f"{PID} (a b) R " + " ".join(str(n) for n in range(1, 18)) + f" {START} 1 2 3\n"
    assert fake.split()[21] == str(START)
    assert not lives(tmp_path, monkeypatch, fake)


def test_a_zombie_resident_with_spaces_in_its_name_is_dead(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert not lives(tmp_path, monkeypatch, stat_line("a b) (c", state="Z"))


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give the stand-in a foreign owner")
def test_a_process_of_another_user_is_not_the_resident(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert not lives(tmp_path, monkeypatch, stat_line("daemon"), owner=65534)


def test_a_resident_holding_its_pid_file_at_the_stamped_fd_needs_no_stat(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The cheap test (housemain.write_pid_file keeps the file open and names the descriptor):
    no /proc/PID/stat read, which here would say dead (a zombie)."""
    locks, root, proc = tmp_path / "locks", tmp_path / "state", tmp_path / "proc"
    for folder in (locks, root, proc / str(PID) / "fd"):
        folder.mkdir(parents=True)
    monkeypatch.setenv("WATCHDOG_SINGLETON_LOCK_DIR", str(locks))
    job = Job(name="web", command=["/bin/true"], workdir="/", lock_dir=str(locks), shared=True)
    pid_file = Path(pid_path(str(locks), str(root)))
    pid_file.write_text(f"{PID} {START} 7\n")
    os.symlink(pid_file, proc / str(PID) / "fd" / "7")
    (proc / str(PID) / "stat").write_text(stat_line("daemon", state="Z"))
    snippet = shared_resident_lives(job, str(root)).replace('/proc/"$p"', f'{proc}/"$p"')
    run = subprocess.run(["sh", "-c", f'd="$1"; {snippet}', "sh", str(locks)], capture_output=True)
    assert run.returncode == 0, run
    os.unlink(proc / str(PID) / "fd" / "7")  # it holds it no more: the start time decides (a zombie)
    run = subprocess.run(["sh", "-c", f'd="$1"; {snippet}', "sh", str(locks)], capture_output=True)
    assert run.returncode != 0, run
