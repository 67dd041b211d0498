"""Files that misbehave: a full or read-only disk, a FIFO or a stranger's file where our log goes,
a lock folder a /tmp cleaner holds, output with no newline to rotate at.

Unit tests run as anyone; the real-filesystem ones mount a small tmpfs and need root.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import stat
import subprocess
import sys
import threading
import time
from typing import Callable, Iterator

import pytest
from conftest import wait_for

from watchdog_singleton import files
from watchdog_singleton.errors import FAILED, UserError
from watchdog_singleton.job.model import Job, JobStore
from watchdog_singleton.lock import flock as lock
from watchdog_singleton.state.store import RunState, StateStore
from watchdog_singleton.supervisor.logsink import LogSink

ROOT = os.getuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="needs root (mount a tmpfs, chown to another user)")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SPLIT_MARKER = re.compile(rb"\n\[watchdog-singleton [^\]\n]*\] "
                          rb"line split at rotation: no newline in (\d+) bytes[^\n]*\n")


# -- fixtures -------------------------------------------------------------------------------
@pytest.fixture
def small_disk(tmp_path: "os.PathLike[str]") -> Iterator[str]:
    """A 1 MiB tmpfs, unmounted after the test whatever happens."""
    if not ROOT:
        pytest.skip("needs root to mount a small tmpfs")
    mount = os.path.join(tmp_path, "disk")
    os.mkdir(mount)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", mount], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", mount], check=False)


def fill(disk: str) -> str:
    """Fill `disk` to the last byte; the filler's path, to delete when space should return."""
    filler = os.path.join(disk, "filler")
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return filler


def remount(disk: str, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", disk], check=True)


def temp_debris(folder: str) -> list[str]:
    return [f for f in os.listdir(folder) if f.endswith(".tmp")]


def in_thread(body: Callable[[], object], timeout: float) -> tuple[bool, object]:
    """Run `body` in a thread; (finished in time, its result or exception)."""
    box: list[object] = []

    def run() -> None:
        try:
            box.append(body())
        except BaseException as exc:  # noqa: BLE001  (the test looks at it)
            box.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    return (not thread.is_alive(), box[0] if box else None)


# -- write_atomic ---------------------------------------------------------------------------
def test_write_atomic_goes_on_after_short_writes(tmp_path: "os.PathLike[str]",
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    real_write = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: real_write(fd, bytes(data[:7])))
    path = os.path.join(tmp_path, "f.json")
    data = bytes(range(256)) * 10
    files.write_atomic(path, data)
    monkeypatch.undo()
    assert open(path, "rb").read() == data


def test_write_atomic_is_not_blocked_by_a_temp_file_a_killed_writer_left(tmp_path: "os.PathLike[str]") -> None:
    path = os.path.join(tmp_path, "f.json")
    open(f"{path}.{os.getpid()}.tmp", "wb").close()  # the old naming: our own pid, left behind
    files.write_atomic(path, b"new")
    assert open(path, "rb").read() == b"new"


def test_a_failed_fsync_leaves_the_old_file_and_no_temp_file(tmp_path: "os.PathLike[str]",
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    path = os.path.join(tmp_path, "f.json")
    files.write_atomic(path, b"old")

    def broken_fsync(fd: int) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError):
        files.write_atomic(path, b"new")
    monkeypatch.undo()
    assert open(path, "rb").read() == b"old"
    assert temp_debris(str(tmp_path)) == []


def test_write_atomic_on_a_full_disk_leaves_no_debris_and_works_once_space_returns(small_disk: str) -> None:
    path = os.path.join(small_disk, "f.json")
    files.write_atomic(path, b"old")
    filler = fill(small_disk)
    for _ in range(3):  # the same process, again and again: never FileExistsError
        with pytest.raises(OSError) as caught:
            files.write_atomic(path, b"x" * 200_000)
        assert caught.value.errno == errno.ENOSPC
        assert temp_debris(small_disk) == []
    assert open(path, "rb").read() == b"old"
    os.unlink(filler)
    files.write_atomic(path, b"x" * 200_000)
    assert open(path, "rb").read() == b"x" * 200_000
    assert temp_debris(small_disk) == []


# -- StateStore and JobStore ----------------------------------------------------------------
def test_state_save_returns_false_on_a_full_disk_and_saves_again_once_space_returns(small_disk: str) -> None:
    store = StateStore(small_disk)
    state = RunState(name="web", phase="running", pid=1234, message="m" * 4000)
    assert store.save(state) and store.last_error is None
    filler = fill(small_disk)
    state.pid = 5678
    assert store.save(state) is False
    assert store.last_error and "No space left on device" in store.last_error and "web.json" in store.last_error
    assert temp_debris(os.path.join(small_disk, "run")) == []
    os.unlink(filler)
    assert store.save(state) is True and store.last_error is None
    loaded = store.load("web")
    assert loaded is not None and loaded.pid == 5678


def test_read_only_state_folder_save_false_job_save_and_remove_one_line_errors(small_disk: str) -> None:
    states, jobs = StateStore(small_disk), JobStore(small_disk)
    job = Job(name="web", command=["true"], workdir="/")
    jobs.save(job)
    assert states.save(RunState(name="web"))
    remount(small_disk, "ro")
    try:
        assert states.save(RunState(name="web", pid=1)) is False
        assert states.last_error and "Read-only file system" in states.last_error
        with pytest.raises(UserError) as caught:
            jobs.save(job)
        assert caught.value.exit_code == FAILED and "web.json" in str(caught.value)
        assert "Read-only file system" in str(caught.value) and "\n" not in str(caught.value)
        with pytest.raises(UserError) as caught:
            jobs.delete("web")  # what uninstall does after removing the crontab line
        assert caught.value.exit_code == FAILED and "cannot remove" in str(caught.value)
        assert states.load("web") is not None, "reads still work on a read-only disk"
    finally:
        remount(small_disk, "rw")
    assert states.save(RunState(name="web", pid=2)) and states.last_error is None


def test_state_save_where_the_folder_cannot_be_made_returns_false(tmp_path: "os.PathLike[str]") -> None:
    open(os.path.join(tmp_path, "run"), "w").close()  # a file where the run folder goes
    store = StateStore(str(tmp_path))
    assert store.save(RunState(name="web")) is False
    assert store.last_error and "run" in store.last_error


def test_state_load_of_a_fifo_gives_none_and_a_reason_without_hanging(tmp_path: "os.PathLike[str]") -> None:
    store = StateStore(str(tmp_path))
    os.makedirs(os.path.join(tmp_path, "run"))
    fifo = os.path.join(tmp_path, "run", "web.json")
    os.mkfifo(fifo)
    try:
        done, result = in_thread(lambda: store.load("web"), timeout=5)
        assert done, "load blocked on a FIFO"
        assert result is None and store.last_error and "not a regular file" in store.last_error
    finally:
        _unblock_fifo(fifo)


def test_state_load_still_refuses_a_symlink(tmp_path: "os.PathLike[str]") -> None:
    store = StateStore(str(tmp_path))
    os.makedirs(os.path.join(tmp_path, "run"))
    os.symlink("/etc/passwd", os.path.join(tmp_path, "run", "web.json"))
    with pytest.raises(UserError, match="symlink"):
        store.load("web")


def _unblock_fifo(fifo: str) -> None:
    """Open the FIFO's other ends, so that a thread stuck in open() (the old code) goes on."""
    for flags in (os.O_RDONLY | os.O_NONBLOCK, os.O_RDWR):
        try:
            os.close(os.open(fifo, flags))
        except OSError:
            pass


# -- LogSink: output with no newline ---------------------------------------------------------
def _drain(sink: LogSink, timeout: float = 20.0) -> None:
    wait_for(lambda: sink.pending() == 0, timeout, what="the sink to write its queue")
    sink.close()


def _log_files(folder: str, base: str) -> list[str]:
    """The rotated files oldest first, then the current one."""
    rotated = sorted((f for f in os.listdir(folder) if f.startswith(base + ".")),
                     key=lambda f: -int(f.rsplit(".", 1)[1]))
    return [os.path.join(folder, f) for f in rotated + [base]]


def test_carriage_return_only_output_is_split_and_rotated_under_the_limit(tmp_path: "os.PathLike[str]") -> None:
    limit = 256 * 1024
    path = os.path.join(tmp_path, "out.log")
    sink = LogSink(path, max_bytes=limit, backups=100)
    data = b"".join(b"\rprogress %7d/5000000" % i for i in range(0, 5_000_000, 21))[:5_000_000]
    for start in range(0, len(data), 4000):
        sink.feed(data[start:start + 4000])
    _drain(sink)
    logs = _log_files(str(tmp_path), "out.log")
    assert len(logs) > 10, "the output was rotated"
    joined = b""
    for log in logs:
        content = open(log, "rb").read()
        assert len(content) <= limit + sink.overrun, f"{log} is {len(content)} bytes"
        joined += content
    markers = SPLIT_MARKER.findall(joined)
    assert len(markers) == len(logs) - 1
    assert SPLIT_MARKER.sub(b"", joined) == data, "every byte kept, nothing but the markers added"


def test_a_split_line_is_marked_at_the_end_of_its_file_with_its_length(tmp_path: "os.PathLike[str]") -> None:
    path = os.path.join(tmp_path, "out.log")
    sink = LogSink(path, max_bytes=1000, backups=5)
    assert sink.overrun == 4096
    sink.feed(b"short\n" + b"z" * 10_000 + b"\nafter\n")
    _drain(sink)
    first = open(path + ".2", "rb").read()
    match = SPLIT_MARKER.search(first)
    assert match and first.endswith(match.group(0)), "the marker closes the file it splits"
    assert int(match.group(1)) == len(first) - len(match.group(0)) - len(b"short\n")
    assert len(first) <= 1000 + sink.overrun


def test_a_long_line_within_the_overrun_is_kept_whole(tmp_path: "os.PathLike[str]") -> None:
    path = os.path.join(tmp_path, "out.log")
    sink = LogSink(path, max_bytes=1000, backups=5)
    sink.feed(b"a" * 3000 + b"\nb\n")
    _drain(sink)
    assert open(path + ".1", "rb").read() == b"a" * 3000 + b"\n"
    assert open(path, "rb").read() == b"b\n"


# -- LogSink and check_log_file: files that are not what they seem ----------------------------
def test_a_fifo_at_the_log_path_makes_the_sink_fail_fast(tmp_path: "os.PathLike[str]") -> None:
    path = os.path.join(tmp_path, "out.log")
    os.mkfifo(path)
    try:
        done, result = in_thread(lambda: LogSink(path), timeout=5)
        assert done, "LogSink blocked in open() on a FIFO"
        assert isinstance(result, files.RefusedFile) and "FIFO" in str(result)
        assert files.check_log_file(path) is not None and "FIFO" in str(files.check_log_file(path))
    finally:
        _unblock_fifo(path)


def test_a_fifo_with_a_reader_is_refused_too(tmp_path: "os.PathLike[str]") -> None:
    path = os.path.join(tmp_path, "out.log")
    os.mkfifo(path)
    reader = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        with pytest.raises(files.RefusedFile, match="FIFO"):
            LogSink(path)
    finally:
        os.close(reader)


def test_a_symlink_at_the_log_path_is_refused(tmp_path: "os.PathLike[str]") -> None:
    path = os.path.join(tmp_path, "out.log")
    os.symlink(os.path.join(tmp_path, "elsewhere"), path)
    with pytest.raises(files.RefusedFile, match="symlink"):
        LogSink(path)
    assert not os.path.exists(os.path.join(tmp_path, "elsewhere"))
    assert "symlink" in str(files.check_log_file(path))


@needs_root
def test_a_log_file_another_user_created_is_refused(tmp_path: "os.PathLike[str]") -> None:
    path = os.path.join(tmp_path, "out.log")
    open(path, "w").close()
    os.chown(path, 65534, 65534)
    with pytest.raises(files.RefusedFile, match="belongs to uid 65534"):
        LogSink(path)
    assert "belongs to uid 65534" in str(files.check_log_file(path))


def test_check_log_file_passes_our_own_or_a_missing_file_and_creates_nothing(tmp_path: "os.PathLike[str]") -> None:
    missing = os.path.join(tmp_path, "sub", "out.log")
    assert files.check_log_file(missing) is None
    assert not os.path.exists(os.path.join(tmp_path, "sub"))
    ours = os.path.join(tmp_path, "ours.log")
    open(ours, "w").close()
    assert files.check_log_file(ours) is None
    assert "folder" in str(files.check_log_file(str(tmp_path)))


# -- the lock folder ------------------------------------------------------------------------
def test_an_existing_lock_folder_keeps_its_mode(tmp_path: "os.PathLike[str]") -> None:
    for mode in (0o755, 0o2775):
        folder = os.path.join(tmp_path, f"locks-{mode:o}")
        os.mkdir(folder)
        os.chmod(folder, mode)
        os.close(lock.open_private_dir(folder))
        assert stat.S_IMODE(os.stat(folder).st_mode) == mode
        taken = lock.FlockLock(folder, "web")
        assert taken.try_acquire()
        taken.release()
        assert stat.S_IMODE(os.stat(folder).st_mode) == mode


def test_a_lock_folder_we_create_is_private(tmp_path: "os.PathLike[str]") -> None:
    folder = os.path.join(tmp_path, "locks")
    os.close(lock.open_private_dir(folder))
    assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700


@needs_root
def test_a_lock_folder_of_another_user_is_still_refused(tmp_path: "os.PathLike[str]") -> None:
    folder = os.path.join(tmp_path, "locks")
    os.mkdir(folder)
    os.chown(folder, 65534, 65534)
    with pytest.raises(UserError, match="belongs to uid 65534"):
        lock.open_private_dir(folder)


def _hold_folder(folder: str, seconds: float) -> subprocess.Popen[bytes]:
    """Another process holding LOCK_EX on `folder` (as systemd-tmpfiles does while it scans)."""
    holder = subprocess.Popen(["flock", "-x", folder, "sh", "-c", f"echo held; exec sleep {seconds}"],
                              stdout=subprocess.PIPE)
    assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
    return holder


def test_try_acquire_waits_out_a_cleaner_holding_the_folder_briefly(tmp_path: "os.PathLike[str]") -> None:
    folder = os.path.join(tmp_path, "locks")
    os.close(lock.open_private_dir(folder))
    holder = _hold_folder(folder, 0.3)
    try:
        taken = lock.FlockLock(folder, "web")
        started = time.monotonic()
        assert taken.try_acquire()
        assert time.monotonic() - started < lock.FOLDER_LOCK_WAIT
        assert holder.poll() is not None or holder.wait(5) == 0, "we got it after the cleaner let go"
        taken.release()
    finally:
        holder.kill()
        holder.wait()


def test_a_folder_busy_past_the_bound_is_one_line_from_the_launcher(tmp_path: "os.PathLike[str]") -> None:
    folder = os.path.join(tmp_path, "locks")
    os.close(lock.open_private_dir(folder))
    holder = _hold_folder(folder, 60)
    try:
        started = time.monotonic()
        result = subprocess.run([sys.executable, "-m", "watchdog_singleton", "run", "--lock-dir", folder,
                                 "--state-dir", os.path.join(tmp_path, "state"), "busy", "--", "true"],
                                capture_output=True, cwd=REPO, timeout=30)
        took = time.monotonic() - started
    finally:
        holder.kill()
        holder.wait()
    err = result.stderr.decode()
    assert result.returncode == FAILED, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert "is busy" in err and folder in err
    assert took >= lock.FOLDER_LOCK_WAIT, "it waited for the cleaner first"


def test_repair_with_the_folder_busy_is_not_now_and_leaks_no_descriptor(tmp_path: "os.PathLike[str]") -> None:
    folder = os.path.join(tmp_path, "locks")
    os.close(lock.open_private_dir(folder))
    holder = _hold_folder(folder, 60)
    try:
        taken = lock.FlockLock(folder, "web")
        before = len(os.listdir("/proc/self/fd"))
        assert taken.repair() == lock.NOT_NOW
        assert len(os.listdir("/proc/self/fd")) == before
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.parametrize("code", [errno.ENOLCK, errno.ENOSYS])
def test_a_filesystem_without_flock_is_one_clear_sentence(tmp_path: "os.PathLike[str]",
                                                          monkeypatch: pytest.MonkeyPatch, code: int) -> None:
    def no_flock(fd: int, operation: int) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(fcntl, "flock", no_flock)
    taken = lock.FlockLock(os.path.join(tmp_path, "locks"), "web")
    with pytest.raises(UserError) as caught:
        taken.try_acquire()
    assert caught.value.exit_code == FAILED
    assert "flock(2) does not work" in str(caught.value) and "\n" not in str(caught.value)
    assert taken.dir_fd is None, "the folder's descriptor was closed"
