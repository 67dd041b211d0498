"""The task farm in a shared world: another user's work folder, database, runners file or list
is refused and nothing of it runs; the farm's files are private whatever the umask; a lock
another user holds on its database, or a full disk, ends it with one line and exit 74; a line
is a task only once its newline has arrived."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
from typing import Any, Iterator

import pytest
from conftest import TEST_USER, Sandbox, UnprivilegedUser, ensure_user, wait_for
from test_farm import WAITER, farm, out_lines, sleeping_tasks, start_farm, status, task_pids, touch, write_list

from watchdog_singleton.errors import STORAGE_FAILED
from watchdog_singleton.farm import tasklist
from watchdog_singleton.farm.store import sqlite as store_mod
from watchdog_singleton.farm.store.sqlite import SqliteStore
from watchdog_singleton.farm.tasklist import Task

OTHER_USER = f"{TEST_USER}2"


@pytest.fixture
def other_user(test_user: UnprivilegedUser) -> UnprivilegedUser:
    """A second unprivileged user: the one who plants things where the test user's farm looks."""
    return ensure_user(OTHER_USER)


@pytest.fixture
def shared(sandbox: Sandbox) -> Iterator[str]:
    """A folder like /tmp or a group project folder: everyone may create in it (sticky)."""
    folder = sandbox.mkdir("shared")
    os.chmod(folder, 0o1777)
    yield folder


def one_line(proc: subprocess.CompletedProcess[str]) -> str:
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("watchdog-singleton: "), proc.stderr
    return lines[0]


def tree_snapshot(root: str) -> dict[str, tuple[int, int, bytes]]:
    """Every path under `root` with its mode, mtime and (for files) bytes: to show nothing changed."""
    found = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(folder, name)
            st = os.lstat(path)
            data = open(path, "rb").read() if stat.S_ISREG(st.st_mode) else b""
            found[path] = (st.st_mode, st.st_mtime_ns, data)
    return found


def plant_database(path: str, user: UnprivilegedUser, command: str) -> None:
    """A farm database holding one todo task, made (as root) and given to `user`."""
    with tempfile.TemporaryDirectory() as folder:  # ours (root's), where SqliteStore agrees to make it
        planted = SqliteStore(os.path.join(folder, "farm.sqlite"))
        planted.add([Task("planted-0", 1, command)])
        planted.close()
        shutil.move(os.path.join(folder, "farm.sqlite"), path)
    os.chown(path, user.uid, user.gid)


# -- 1. only the user's own folders and files ---------------------------------------------

@pytest.mark.parametrize("plant", ["work-folder", "database", "runners", "symlink", "tasklist"])
def test_a_work_folder_database_runners_file_or_list_of_another_user_is_refused_and_nothing_of_it_runs(
        sandbox: Sandbox, shared: str, other_user: UnprivilegedUser, plant: str) -> None:
    listing = os.path.join(shared, "tasks.txt")
    with open(listing, "w") as f:
        f.write("echo mine >> out\n")
    os.chown(listing, sandbox.user.uid, sandbox.user.gid)
    workdir = f"{listing}.farm"
    pwned = sandbox.path("PWNED")
    args = [listing]
    if plant == "work-folder":  # made first by the other user, in a place everyone may create in
        os.mkdir(workdir)
        plant_database(os.path.join(workdir, "farm.sqlite"), other_user, f"id > {pwned}")
        os.chown(workdir, other_user.uid, other_user.gid)
        os.chmod(workdir, 0o777)
        culprit = workdir
    elif plant == "database":  # the folder is ours, the database in it is not
        plant_database(sandbox.path("farm.sqlite"), other_user, f"id > {pwned}")
        args += ["--db", sandbox.path("farm.sqlite")]
        culprit = sandbox.path("farm.sqlite")
    elif plant == "runners":
        os.mkdir(workdir, 0o700)
        os.chown(workdir, sandbox.user.uid, sandbox.user.gid)
        runners = os.path.join(workdir, "runners.ini")
        with open(runners, "w") as f:
            f.write(f"[cvmfs]\nprefix = /bin/sh -c 'id > {pwned}'\n")
        os.chown(runners, other_user.uid, other_user.gid)
        args += ["--runner", "cvmfs"]
        culprit = runners
    elif plant == "symlink":  # LIST.farm points at a folder the other user controls
        target = os.path.join(shared, "theirs")
        os.mkdir(target)
        plant_database(os.path.join(target, "farm.sqlite"), other_user, f"id > {pwned}")
        os.symlink(target, workdir)
        culprit = workdir
    else:  # the list itself: a line its owner appends runs as us
        os.chown(listing, other_user.uid, other_user.gid)
        culprit = listing
    before = tree_snapshot(sandbox.dir)
    proc = farm(sandbox, *args)
    assert proc.returncode == 2, proc.stderr
    line = one_line(proc)
    assert culprit in line, line
    assert ("symlink" in line) if plant == "symlink" else (f"{OTHER_USER} (uid {other_user.uid})" in line), line
    assert not os.path.exists(pwned) and not os.path.exists(sandbox.path("out"))
    assert tree_snapshot(sandbox.dir) == before  # nothing written anywhere


def test_a_work_folder_others_can_write_is_refused(sandbox: Sandbox) -> None:
    listing = write_list(sandbox, ["echo never >> out"])
    workdir = sandbox.mkdir("tasks.txt.farm")
    os.chmod(workdir, 0o777)  # ours, but anyone could put a database in it
    proc = farm(sandbox, listing)
    assert proc.returncode == 2, proc.stderr
    assert "can be written by other users" in one_line(proc) and workdir in proc.stderr
    assert os.listdir(workdir) == [] and not os.path.exists(sandbox.path("out"))


def private(path: str) -> str:
    """`path` and its mode, as the assertion below wants to show it."""
    return f"{path} {stat.S_IMODE(os.lstat(path).st_mode):04o}"


@pytest.mark.parametrize("umask", ["022", "000"])
def test_the_farms_files_and_folders_are_private_whatever_the_umask(sandbox: Sandbox, umask: str) -> None:
    listing = write_list(sandbox, ["while [ ! -e GO ]; do sleep 0.05; done; echo a >> out", "echo b >> out"])
    workdir = f"{listing}.farm"
    argv = ["/bin/sh", "-c", f'umask {umask}; exec "$0" -m watchdog_singleton farm "$1" --workers 2',
            sys.executable, listing]
    running = subprocess.Popen(argv, env=sandbox.env(), cwd=sandbox.dir, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, **sandbox.user.popen_kwargs())
    try:
        # While it runs, SQLite's -wal and -shm exist (they go when the last connection closes).
        wait_for(lambda: out_lines(sandbox) == ["b"], 30, what="the second task")
        wait_for(lambda: os.path.exists(os.path.join(workdir, "timeline.jsonl")), 30, what="the timeline")
        files = [os.path.join(workdir, name) for name in
                 ("farm.sqlite", "farm.sqlite-wal", "farm.sqlite-shm", "timeline.jsonl")]
        files += [os.path.join(workdir, "logs", name) for name in os.listdir(os.path.join(workdir, "logs"))]
        assert len(files) == 6
        assert [private(p) for p in files] == [f"{p} 0600" for p in files]
        assert [private(p) for p in (workdir, os.path.join(workdir, "logs"))] == \
            [f"{workdir} 0700", f"{workdir}/logs 0700"]
        touch(sandbox, "GO")
        _, err = running.communicate(timeout=30)
    finally:
        if running.poll() is None:
            running.kill()
            running.wait()
    assert running.returncode == 0, err
    assert private(os.path.join(workdir, "timeline.jsonl")).endswith(" 0600")
    trace = sandbox.path("trace.json")
    assert farm(sandbox, "trace", listing, "-o", trace).returncode == 0
    assert private(trace).endswith(" 0600")


# -- 2. a database or disk that fails: one line, exit 74 ------------------------------------

def stderr_problem_lines(err: str, needle: str) -> list[str]:
    assert "Traceback" not in err, err
    return [line for line in err.splitlines() if needle in line]


def test_a_lock_another_user_holds_on_the_shm_ends_the_farm_with_one_line_and_exit_74(
        sandbox: Sandbox, other_user: UnprivilegedUser) -> None:
    names = [f"s{i}" for i in range(4)]
    listing = write_list(sandbox, [WAITER.format(name=n) for n in names])
    shm = f"{listing}.farm/farm.sqlite-shm"
    first = start_farm(sandbox, listing, "--workers", "2", "--grace", "1", "--lease", "3")
    holder = None
    try:
        wait_for(lambda: sleeping_tasks(sandbox, listing, 2), 30, what="two running tasks")
        # The other user holds a read lock on the whole -shm (a file only we can open now: the
        # descriptor is handed over, as a stray `sqlite3` of root's or a backup tool would hold it).
        fd = os.open(shm, os.O_RDWR)
        try:
            holder = subprocess.Popen(
                [sys.executable, "-c", f"import fcntl, sys; fcntl.lockf({fd}, fcntl.LOCK_SH); print('locked', "
                 "flush=True); sys.stdin.read()"], pass_fds=(fd,), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                text=True, user=other_user.uid, group=other_user.gid, extra_groups=[])
        finally:
            os.close(fd)
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        _, err = first.communicate(timeout=90)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
        if holder is not None:
            holder.kill()
            holder.wait()
    assert first.returncode == STORAGE_FAILED, err
    (line,) = stderr_problem_lines(err, "database is locked")
    assert "farm.sqlite" in line and f"exit {STORAGE_FAILED}" in line, err
    assert task_pids(sandbox, listing) == []
    # The lock gone, the next farm takes the stopped tasks back and each runs once.
    touch(sandbox, "GO")
    proc = farm(sandbox, listing, "--workers", "2")
    assert proc.returncode == 0, proc.stderr
    assert sorted(out_lines(sandbox)) == names


@pytest.fixture
def small_disk(sandbox: Sandbox) -> Iterator[str]:
    """A 1 MiB file system of the test user's (a tmpfs), unmounted after the test."""
    if os.getuid() != 0:
        pytest.skip("needs root to mount a small tmpfs")
    mnt = sandbox.mkdir("small")
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size=1m,mode=0700,uid={sandbox.user.uid},gid={sandbox.user.gid}",
                    "farm-safety", mnt], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", mnt], check=False)


def test_a_full_work_folder_ends_the_farm_with_one_line_and_exit_74(sandbox: Sandbox, small_disk: str) -> None:
    workdir = os.path.join(small_disk, "work")
    # One worker, in order: the third task fills the disk the farm's files are on (not its own output).
    fill = f"test -e filled && exit 0; touch filled; head -c 4M /dev/zero > {small_disk}/filler; true"
    names = ["t0", "t1", "t2", "t3"]
    listing = write_list(sandbox, [f"echo {n} >> out" for n in names[:2]] + [fill] +
                         [f"echo {n} >> out" for n in names[2:]])
    proc = farm(sandbox, listing, "--workers", "1", "--workdir", workdir)
    assert proc.returncode == STORAGE_FAILED, proc.stderr
    (line,) = stderr_problem_lines(proc.stderr, "disk is full")
    assert f"exit {STORAGE_FAILED}" in line, proc.stderr
    assert out_lines(sandbox) == ["t0", "t1"]  # it took nothing more once its files failed
    os.unlink(os.path.join(small_disk, "filler"))
    again = farm(sandbox, listing, "--workers", "1", "--workdir", workdir)
    assert again.returncode == 0, again.stderr
    assert out_lines(sandbox) == names  # the tasks before the failure did not run again


def test_a_read_only_work_folder_ends_the_farm_with_one_line_and_exit_74(sandbox: Sandbox) -> None:
    listing = write_list(sandbox, ["echo a >> out"])
    assert farm(sandbox, listing).returncode == 0
    with open(listing, "a") as f:
        f.write("echo b >> out\n")
    os.chmod(f"{listing}.farm", 0o500)  # SQLite cannot make its -wal there
    proc = farm(sandbox, listing)
    assert proc.returncode == STORAGE_FAILED, proc.stderr
    assert "readonly database" in one_line(proc) and "farm.sqlite" in proc.stderr
    assert out_lines(sandbox) == ["a"]
    os.chmod(f"{listing}.farm", 0o700)
    assert farm(sandbox, listing).returncode == 0
    assert out_lines(sandbox) == ["a", "b"]


def test_a_result_the_locked_database_refused_is_recorded_once_the_lock_goes(
        tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from watchdog_singleton.farm.store import Guarded

    monkeypatch.setattr(store_mod, "BUSY_TIMEOUT", 0.2)
    path = str(tmp_path / "farm.sqlite")
    errors: list[str] = []
    store = Guarded(SqliteStore(path), errors.append)
    store.add([Task("t-0", 1, "true")])
    (claim,) = store.claim("host/1/a", lease=30, limit=1)
    other = SqliteStore(path)
    other.db.execute("BEGIN IMMEDIATE")  # someone holds the write lock
    assert not store.finish(claim, 0)
    assert len(errors) == 1 and "database is locked" in errors[0]
    assert store.settle() == 1  # still locked
    other.db.execute("ROLLBACK")
    assert store.settle() == 0
    assert store.stats()["finished"] == 1
    other.close()
    store.close()


def test_a_removed_database_stops_the_farm_instead_of_writing_into_a_ghost(tmp_path: Any) -> None:
    from watchdog_singleton.farm.store import Guarded

    path = str(tmp_path / "farm.sqlite")
    errors: list[str] = []
    store = Guarded(SqliteStore(path), errors.append)
    store.add([Task("t-0", 1, "true")])
    os.unlink(path)
    assert store.claim("host/1/a", lease=30, limit=1) == []
    assert errors and "removed" in errors[0]
    store.close()


# -- 5. a line is a task once its newline has arrived ---------------------------------------

def test_a_last_line_without_its_newline_is_a_task_only_when_the_farm_starts(tmp_path: Any) -> None:
    assert [t.command for t in tasklist.parse(["a\n", "b"], last_unended=True)] == ["a", "b"]
    assert [t.command for t in tasklist.parse(["a\n", "b"], last_unended=False)] == ["a"]
    path = tmp_path / "tasks.txt"
    path.write_text("a\nb")
    assert [t.command for t in tasklist.read(str(path), at_start=True)] == ["a", "b"]
    assert [t.command for t in tasklist.read(str(path))] == ["a"]


def test_a_line_appended_in_two_halves_while_the_farm_runs_runs_whole(sandbox: Sandbox) -> None:
    listing = write_list(sandbox, ["while [ ! -e GO ]; do sleep 0.05; done"])
    running = start_farm(sandbox, listing, "--workers", "2")
    try:
        wait_for(lambda: task_pids(sandbox, listing), 30, what="the first task")
        with open(listing, "a") as f:  # a whole line and the first half of the next, in one write
            f.write("echo first >> out\necho whole >> out")
        # `first` ran: the farm has read the list since the half line arrived.
        wait_for(lambda: out_lines(sandbox) == ["first"], 30, what="the whole line to run")
        with open(listing, "a") as f:
            f.write("; echo tail >> out\n")
        wait_for(lambda: "tail" in out_lines(sandbox), 30, what="the completed line to run")
        touch(sandbox, "GO")
        _, err = running.communicate(timeout=30)
    finally:
        if running.poll() is None:
            running.kill()
            running.wait()
    assert running.returncode == 0, err
    assert out_lines(sandbox) == ["first", "whole", "tail"]  # the half line never ran alone
    assert status(sandbox, listing)["counts"]["finished"] == 3
