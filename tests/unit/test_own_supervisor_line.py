"""The crontab line of a daemon kept alive by a supervisor of its own reads that supervisor's
`PID START` file (lock/supfile.py) with shell builtins once the lock is held, as a shared job's line
reads its resident's: the launcher runs only when the file names no live process of ours. Run under
sh, with a stand-in flock(1) that says "held" and a folder standing in for /proc."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from watchdog_singleton.cron.crontab import MAX_COMMAND, render
from watchdog_singleton.errors import LOCK_HELD
from watchdog_singleton.job.model import Job
from watchdog_singleton.lock.supfile import file_name

PID, START = 4242, 987654


def job_in(locks: Path, name: str = "web", **options: Any) -> Job:
    return Job(name=name, command=["/bin/true"], workdir="/", lock_dir=str(locks), **options)


def tick(tmp_path: Path, job: Job, pid_file: str | None, stat: str = "") -> bool:
    """Whether NAME's line ran the launcher (a stand-in that leaves a mark), its lock held."""
    locks, proc, mark = Path(job.lock_dir), tmp_path / "proc", tmp_path / "ran"
    locks.mkdir(parents=True, exist_ok=True)
    (proc / str(PID)).mkdir(parents=True, exist_ok=True)
    (proc / str(PID) / "stat").write_text(stat)
    Path(job.lock_path).write_text("")
    if pid_file is not None:
        (locks / file_name(job.name)).write_text(pid_file)
    flock, python = tmp_path / "flock", tmp_path / "python"
    flock.write_text(f"#!/bin/sh\nexit {LOCK_HELD}\n")
    python.write_text(f"#!/bin/sh\ntouch {mark}\n")
    for tool in (flock, python):
        tool.chmod(0o755)
    line = render(job, str(python), str(tmp_path / "state"), str(flock)).decode()
    command = line.split(" ", 5)[5].replace('/proc/"$p"', f'{proc}/"$p"')
    run = subprocess.run(["sh", "-c", command], capture_output=True)
    assert run.stdout == b"" and run.stderr == b"", run
    return mark.exists()


def stat_line(state: str = "S", start: int = START) -> str:
    return f"{PID} (sup ervisor) {state} " + " ".join(str(n) for n in range(1, 19)) + f" {start} 20 21\n"


def test_a_held_lock_whose_supervisor_lives_runs_no_launcher(tmp_path: Path) -> None:
    assert not tick(tmp_path, job_in(tmp_path / "locks"), f"{PID} {START}\n", stat_line())


@pytest.mark.parametrize("pid_file, stat", [
    (f"{PID} {START}\n", ""),  # no such process
    (f"{PID} {START}\n", stat_line(start=START + 1)),  # its pid reused by another process
    (f"{PID} {START}\n", stat_line(state="Z")),  # killed, not yet reaped
    (None, stat_line()),  # no file: a supervisor of an older version; the launcher writes it for it
    ("", stat_line()),  # empty
])
def test_a_held_lock_whose_supervisor_is_not_seen_alive_runs_the_launcher(
        tmp_path: Path, pid_file: str | None, stat: str) -> None:
    assert tick(tmp_path, job_in(tmp_path / "locks"), pid_file, stat)


def test_a_symlink_in_place_of_the_file_runs_the_launcher(tmp_path: Path) -> None:
    job = job_in(tmp_path / "locks")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_text(f"{PID} {START}\n")
    (tmp_path / "locks").mkdir()
    os.symlink(elsewhere, os.path.join(job.lock_dir, file_name(job.name)))
    assert tick(tmp_path, job, None, stat_line())


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give the file a foreign owner")
def test_a_file_of_another_user_runs_the_launcher(tmp_path: Path) -> None:
    job = job_in(tmp_path / "locks")
    (tmp_path / "locks").mkdir()
    planted = os.path.join(job.lock_dir, file_name(job.name))
    with open(planted, "w") as f:
        f.write(f"{PID} {START}\n")
    os.chown(planted, 65534, 65534)
    assert tick(tmp_path, job, None, stat_line())


@pytest.mark.parametrize("options", [{"periodic": True, "every": 60.0}, {"lean": True},
                                     {"cluster": "postgresql://db/ws"}])
def test_jobs_with_nothing_to_adopt_keep_the_plain_line(tmp_path: Path, options: dict[str, Any]) -> None:
    line = render(job_in(tmp_path, **options), "/p", "/s", "/usr/bin/flock").decode()
    assert file_name("") not in line and '"$h"' not in line


def test_the_line_stays_under_crons_1000_bytes_with_long_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    """cron reads MAX_COMMAND bytes of a command: the paths and the name go into variables, each
    once, so even long ones leave room for the check."""
    home = "/home/" + "u" * 24 + "/" + "x" * 50
    name = "n" * 64  # the longest name check_name allows
    lock_dir = "/tmp/watchdog-singleton-" + "a" * 16 + "/" + "l" * 30
    python, root = home + "/venv/bin/python3", home + "/.local/state/watchdog-singleton/" + "h" * 30
    own = render(job_in(Path(lock_dir), name), python, root, "/usr/bin/flock", "-I")
    assert b".sup.$n.pid" in own
    assert len(command_of(own, name)) <= MAX_COMMAND, len(command_of(own, name))
    monkeypatch.setenv("WATCHDOG_SINGLETON_LOCK_DIR", lock_dir)  # the shared resident's files beside the lock
    shared = render(job_in(Path(lock_dir), name, shared=True), python, root, "/usr/bin/flock", "-I")
    assert len(own) <= len(shared), "a job's own line costs more bytes than a shared job's"


def command_of(line: bytes, name: str) -> bytes:
    """What cron runs of our line: all after the five schedule fields, up to our tag."""
    return line.split(b" ", 5)[5].rsplit(b" #watchdog-singleton:" + name.encode(), 1)[0]


def test_paths_too_long_for_the_check_drop_it_rather_than_be_cut() -> None:
    """Past cron's MAX_COMMAND the shell would run a cut command: the check for a dead supervisor
    goes (the line still guards the lock), and it is never cut."""
    from watchdog_singleton.cron.crontab import guarded

    launcher = "cd / && exec /usr/bin/python3 -m watchdog_singleton run --cron --state-dir /s web"
    for length in range(50, 800, 5):  # the shortest lock folder whose checked line is too long
        job = job_in(Path("/tmp/" + "d" * length), "web")
        if len(guarded(job, launcher, "/s", "/usr/bin/flock")) > MAX_COMMAND:
            break
    else:
        pytest.fail("no lock folder made the checked line too long")
    command = command_of(render(job, "/usr/bin/python3", "/s", "/usr/bin/flock"), "web")
    assert len(command) <= MAX_COMMAND, len(command)
    assert b".sup." not in command and b"flock -n" in command


def test_paths_too_long_for_any_line_are_refused_as_bad_input(tmp_path: Path) -> None:
    from watchdog_singleton.errors import USAGE, UserError

    deep = "/tmp/" + "/".join(["x" * 200] * 3)
    with pytest.raises(UserError) as caught:
        render(job_in(Path(deep), "web"), "/usr/bin/python3", deep, "/usr/bin/flock")
    assert caught.value.exit_code == USAGE and f"past the {MAX_COMMAND} that cron reads" in str(caught.value)


def holding(tmp_path: Path, job: Job, fd: int, target: Path | None = None) -> None:
    """Process PID (the fake /proc's) holds `target` (by default NAME's supervisor file) at `fd`."""
    fds = tmp_path / "proc" / str(PID) / "fd"
    fds.mkdir(parents=True, exist_ok=True)
    os.symlink(target or Path(job.lock_dir) / file_name(job.name), fds / str(fd))


def test_a_supervisor_holding_its_file_at_the_stamped_fd_is_alive_without_reading_its_stat(tmp_path: Path) -> None:
    """The cheap test: the file's FD, open in process PID, is this very file; /proc/PID/stat is
    not read (here it is empty, which the start-time test would take for a dead process)."""
    job = job_in(tmp_path / "locks")
    holding(tmp_path, job, 5)
    assert not tick(tmp_path, job, f"{PID} {START} 5\n", "")


@pytest.mark.parametrize("fd, target", [(6, None), (5, "copy")])
def test_a_stamped_fd_that_is_not_this_file_falls_back_to_the_start_time(
        tmp_path: Path, fd: int, target: str | None) -> None:
    """Another descriptor number, or that number on another file (a pid reused by a stranger, a
    file put back by a cleaner): the start time decides, as for a file without FD."""
    job = job_in(tmp_path / "locks")
    copy = tmp_path / "copy"
    copy.write_text(f"{PID} {START} 5\n")
    holding(tmp_path, job, fd, copy if target else None)
    assert tick(tmp_path, job, f"{PID} {START} 5\n", ""), "taken for alive with neither test passing"
    (tmp_path / "ran").unlink()
    assert not tick(tmp_path, job, f"{PID} {START} 5\n", stat_line()), "the start-time test did not follow"
