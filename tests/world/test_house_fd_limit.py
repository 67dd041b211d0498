"""The shared resident and its open-file limit (install --shared): a job it has no descriptors for
is refused before it is taken (the tick then runs it under a supervisor of its own), each daemon
gets back the soft limit the resident was started with, and running out of descriptors is named
for what it is. The count and the limit are a seam (Seams.fd_count, Seams.fd_limit)."""

from __future__ import annotations

import _socket
import errno
import os
import subprocess
import sys
import threading
from typing import Any

import pytest
from fakeworld import FakeLock, FakeWorld

from watchdog_singleton.job import daemonenv
from watchdog_singleton.job.model import Job
from watchdog_singleton.lock.flock import FlockLock
from watchdog_singleton.proc import fdlimit
from watchdog_singleton.proc.spawn import spawn
from watchdog_singleton.state.store import StateStore
from watchdog_singleton.supervisor.house import House
from watchdog_singleton.supervisor.housemain import Door
from watchdog_singleton.supervisor.housewire import receive, send
from watchdog_singleton.tick.handover import REFUSED, offer


def make_job(tmp: str, name: str) -> Job:
    logs = os.path.join(tmp, "logs")
    return Job(name=name, command=["/bin/daemon", name], workdir="/", lock_dir=os.path.join(tmp, "locks"),
               stdout_log=os.path.join(logs, f"{name}.out"), stderr_log=os.path.join(logs, f"{name}.err"))


def house_with(tmp: str, used: int, limit: int, world: FakeWorld | None = None) -> House:
    seams = (world or FakeWorld()).seams()
    seams.fd_count, seams.fd_limit = (lambda: used), (lambda: limit)
    house = House(StateStore(os.path.join(tmp, "state")), seams=seams, socket_path=os.path.join(tmp, ".house.sock"))
    house.open()
    return house


@pytest.mark.parametrize("used,fits", [(10, True), (64 - fdlimit.PER_JOB - fdlimit.MARGIN, True),
                                       (64 - fdlimit.PER_JOB - fdlimit.MARGIN + 1, False), (63, False)])
def test_a_job_fits_only_with_its_share_and_a_margin_left(tmp_path: Any, used: int, fits: bool) -> None:
    house = house_with(str(tmp_path), used, 64)
    why = house.room()
    if fits:
        assert why is None
    else:
        assert why == f"the shared supervisor pid {os.getpid()} has no descriptors left (limit 64)"


def test_a_handed_over_job_that_does_not_fit_is_refused_and_its_lock_stays_the_ticks(tmp_path: Any) -> None:
    tmp = str(tmp_path)
    house = house_with(tmp, 60, 64)
    door = Door(house, os.path.join(tmp, ".house.sock"), FlockLock(tmp, ".house"))
    job = make_job(tmp, "web")
    os.makedirs(job.lock_dir, exist_ok=True)
    ticks = FlockLock(job.lock_dir, job.name)
    assert ticks.try_acquire()
    ours, theirs = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        assert ticks.fd is not None and ticks.dir_fd is not None
        handed = [os.dup(ticks.fd), os.dup(ticks.dir_fd)]
        door.open.add(ours)
        door._handle(ours, {"op": "take", "job": job.to_dict(), "history": {}}, handed)
        answer, _ = receive(theirs)
        assert answer == {"refused": f"the shared supervisor pid {os.getpid()} has no descriptors left (limit 64)"}
        assert "web" not in house.members
        for fd in handed:  # our copies closed; the tick's own still hold the lock
            with pytest.raises(OSError):
                os.fstat(fd)
        assert not FlockLock(job.lock_dir, job.name).try_acquire()
        assert ticks.still_ours()
    finally:
        theirs.close()
        ticks.release()
        door.close()
        house.close()


def test_the_tick_hears_the_refusal_and_nothing_was_taken(tmp_path: Any) -> None:
    tmp = str(tmp_path)
    path = os.path.join(tmp, "h.sock")
    server = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)
    server.settimeout(10)

    def resident() -> None:
        fd, _ = server._accept()  # type: ignore[attr-defined]
        conn = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM, 0, fd)
        _, fds = receive(conn)
        for fd in fds:
            os.close(fd)
        send(conn, {"refused": "the shared supervisor pid 7 has no descriptors left (limit 64)"})
        conn.close()
    thread = threading.Thread(target=resident)
    thread.start()
    job = make_job(tmp, "web")
    os.makedirs(job.lock_dir, exist_ok=True)
    lock = FlockLock(job.lock_dir, job.name)
    assert lock.try_acquire()
    try:
        answer = offer(path, job, lock, {})
    finally:
        thread.join(10)
        server.close()
    assert answer == REFUSED + "the shared supervisor pid 7 has no descriptors left (limit 64)"
    assert lock.still_ours()
    lock.release()


def test_a_start_without_a_descriptor_left_is_named_so_in_its_log(tmp_path: Any) -> None:
    """A pipe or /dev/null that cannot be opened is the resident's trouble, not the command's."""
    tmp = str(tmp_path)
    house = house_with(tmp, 10, 64)

    def no_descriptor(*args: Any, **kwargs: Any) -> Any:
        raise OSError(errno.EMFILE, "Too many open files")
    house.seams.spawn = no_descriptor
    job = make_job(tmp, "web")
    house.take(job, FakeLock(job.lock_path))
    house._turn()
    house.close()  # the log written out
    with open(job.stderr_log) as f:
        log = f.read()
    assert "cannot start /bin/daemon: the supervisor is out of file descriptors" in log
    assert "Too many open files" not in log


def test_out_of_descriptors_in_one_jobs_handling_is_named_so_in_its_log(tmp_path: Any) -> None:
    tmp = str(tmp_path)
    house = house_with(tmp, 10, 64)
    job = make_job(tmp, "web")
    house.take(job, FakeLock(job.lock_path))
    house._turn()

    def full(now: float) -> None:
        raise OSError(errno.EMFILE, "Too many open files")
    house.members["web"].sup.life.tick = full  # type: ignore[method-assign]
    house._turn()
    assert "web" not in house.members
    [failure] = house.failures
    assert "(out of file descriptors" in failure and "OSError" not in failure and "Errno" not in failure
    house.close()  # the log written out
    with open(job.stderr_log) as f:
        assert "the shared supervisor failed on this job (out of file descriptors" in f.read()


def test_a_user_lookup_without_a_descriptor_left_is_no_missing_user(monkeypatch: Any) -> None:
    """getpwuid reads /etc/passwd: with EMFILE it raises KeyError('uid not found')."""
    def lost(uid: int) -> Any:
        raise KeyError(f"getpwuid(): uid not found: {uid}")

    def full(*args: Any, **kwargs: Any) -> int:
        raise OSError(errno.EMFILE, "Too many open files")
    monkeypatch.setattr("watchdog_singleton.job.daemonenv.pwd.getpwuid", lost)
    monkeypatch.setattr("watchdog_singleton.job.daemonenv.os.open", full)
    with pytest.raises(OSError) as caught:
        daemonenv.daemon_env(make_job("/tmp", "web"))
    assert caught.value.errno == errno.EMFILE
    assert fdlimit.out_of(caught.value) is not None


def test_a_daemon_gets_the_soft_limit_it_is_given_not_ours() -> None:
    child = spawn(["/bin/sh", "-c", "ulimit -Sn; ulimit -Hn"], "/", {"PATH": "/usr/bin:/bin"}, nofile=64)
    os.waitpid(child.pid, 0)
    assert child.stdout is not None and child.stderr is not None
    out = os.read(child.stdout, 1000).decode().split()
    os.close(child.stdout)
    os.close(child.stderr)
    import resource

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    assert out == ["64", "unlimited" if hard == resource.RLIM_INFINITY else str(hard)]


def test_the_resident_raises_its_soft_limit_to_the_hard_one_and_remembers_the_old() -> None:
    import resource

    import watchdog_singleton

    hard = min(resource.getrlimit(resource.RLIMIT_NOFILE)[1], 4096)
    parent = os.path.dirname(os.path.dirname(os.path.abspath(watchdog_singleton.__file__)))
    probe = (f"import sys; sys.path.insert(0, {parent!r}); import resource; "
             "from watchdog_singleton.proc.fdlimit import raise_soft; "
             "print(raise_soft(), *resource.getrlimit(resource.RLIMIT_NOFILE))")
    out = subprocess.run([sys.executable, "-I", "-S", "-c", probe], capture_output=True, text=True, timeout=60,
                         check=True, preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))).stdout
    assert out.split() == ["64", str(hard), str(hard)]


def test_the_anchor_raising_its_limit_loads_only_fdlimit_and_resource() -> None:
    """The anchor's pinned modules (test_house_anchor.py) plus what its main loads to raise its limit:
    proc/fdlimit.py and `resource` (a 19 KiB C module: about 28 KiB more USS, measured)."""
    import watchdog_singleton

    parent = os.path.dirname(os.path.dirname(os.path.abspath(watchdog_singleton.__file__)))
    probe = (f"import sys; sys.path.insert(0, {parent!r}); "
             "from watchdog_singleton.supervisor import anchor; "
             "from watchdog_singleton.proc.fdlimit import raise_soft; "
             "raise_soft(); print('resource' in sys.modules, *sorted(m for m in sys.modules "
             "if m.startswith('watchdog_singleton')))")
    out = subprocess.run([sys.executable, "-I", "-S", "-c", probe], capture_output=True, text=True, timeout=60,
                         check=True).stdout
    assert out.split() == ["True", "watchdog_singleton", "watchdog_singleton.proc", "watchdog_singleton.proc.fdlimit",
                           "watchdog_singleton.supervisor", "watchdog_singleton.supervisor.anchor",
                           "watchdog_singleton.supervisor.housewire"]


def test_a_failure_notifier_of_the_resident_gets_the_limit_it_was_started_with(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    """Not only daemons: every child of a process that raised its own limit (the notifier too,
    which notify.launch starts without naming a limit) gets the limit it was started with."""
    from watchdog_singleton.job import notify
    from watchdog_singleton.proc import spawn as spawning

    out = tmp_path / "limit"
    monkeypatch.setattr(spawning, "children_nofile", 64)
    monkeypatch.setattr(notify, "BOOT", f"import os; os.system('ulimit -Sn > {out}')")
    pid = notify.launch({"event": "failed", "name": "web"}, {"PATH": "/usr/bin:/bin"})
    os.waitpid(pid, 0)
    assert out.read_text().split() == ["64"]
