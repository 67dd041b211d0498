"""A tick's adoption (supervisor/adopt.py) reads the adopted daemon's stdout and stderr again: the
pipes its supervisor made, whose inodes the run state keeps, opened anew through /proc/PID/fd/N.
Here /proc/PID/fd/N is a seam pointing at FIFOs in a temporary folder (a FIFO opens as a pipe
through /proc does); the rest is the fake world. No sleeps; every time below is simulated."""

from __future__ import annotations

import errno
import os
import subprocess
from typing import Any, Optional

import pytest
from fakeworld import SUPERVISOR, FakeLock, FakeProc, FakeWorld

from watchdog_singleton.job.model import Job
from watchdog_singleton.proc import procs
from watchdog_singleton.proc.procs import UNKNOWN_EXIT
from watchdog_singleton.proc.spawn import Spawned
from watchdog_singleton.state.phases import Phase
from watchdog_singleton.state.store import RunState, StateStore
from watchdog_singleton.supervisor.adopt import adopt_orphans
from watchdog_singleton.supervisor.house import SIGTERM, House
from watchdog_singleton.tick.launch import previous_history

T0 = 1000.0
DEAD_HOUSE = 3_999_999  # the killed resident: no process of the fake world


class Setup:
    def __init__(self, tmp_path: Any) -> None:
        self.dir = str(tmp_path)
        self.root = os.path.join(self.dir, "state")
        self.world = FakeWorld()
        self.store = StateStore(self.root)
        self.job = Job(name="web", command=["/bin/daemon"], workdir="/", lock_dir=os.path.join(self.dir, "locks"),
                       stdout_log=os.path.join(self.dir, "web.out"), stderr_log=os.path.join(self.dir, "web.err"),
                       shared=True)
        seams = self.world.seams()
        seams.load_job = lambda root, name: self.job if name == "web" else None
        self.house = House(self.store, seams=seams, socket_path="/fake/.house.sock")
        self.house.open()
        self.fifos = {n: os.path.join(self.dir, f"fd{n}") for n in (1, 2)}  # what /proc/PID/fd/N stands for
        for path in self.fifos.values():
            os.mkfifo(path, 0o600)
        self.daemon: FakeProc = self.world.stray(self.job.lock_path, self.job.command)
        self.writers: list[int] = []

    def inode(self, n: int) -> int:
        return os.stat(self.fifos[n]).st_ino

    def orphan(self, **recorded: Any) -> None:
        pipes: dict[str, Any] = {"stdout_pipe": self.inode(1), "stderr_pipe": self.inode(2), **recorded}
        state = RunState(name="web", phase=Phase.RUNNING, boot_id="fake-boot", supervisor_pid=DEAD_HOUSE,
                         supervisor_start=5, pid=self.daemon.pid, pid_start=self.world.start_time(self.daemon.pid),
                         command=self.job.command, lock_path=self.job.lock_path, house="/fake/.old.sock", **pipes)
        data = state.to_dict()
        for key in pipes:
            if pipes[key] == "absent":  # a state file written before the pipes were recorded
                del data[key]
        self.store.folder.write("web", data, durable=False)

    def adopt(self, fd_path: Optional[Any] = None) -> list[str]:
        def path(pid: int, n: int) -> str:
            assert pid == self.daemon.pid
            return self.fifos[n]
        return adopt_orphans(self.house, self.root, make_lock=lambda d, n: FakeLock(self.job.lock_path),
                             fd_path=fd_path or path)

    def write(self, n: int, text: str) -> None:
        """The daemon's write to its fd N: ENXIO when nothing reads that pipe (EPIPE for a daemon)."""
        fd = os.open(self.fifos[n], os.O_WRONLY | os.O_NONBLOCK)
        self.writers.append(fd)
        os.write(fd, text.encode())

    def finish(self) -> None:
        for fd in self.writers:
            os.close(fd)
        self.world.at(T0 + 5, lambda: self.house.wakeups.signals.append(SIGTERM))
        self.house.run()

    def log(self, which: str) -> str:
        with open(self.job.stdout_log if which == "out" else self.job.stderr_log) as f:
            return f.read()


def test_an_adopted_daemons_output_reaches_its_logs_again(tmp_path: Any) -> None:
    s = Setup(tmp_path)
    s.orphan()
    assert s.adopt() == ["web"]
    s.write(1, "served /index.html\n")
    s.write(2, "GET / 200\n")
    s.house.pump.wait(0)
    s.finish()
    assert "served /index.html" in s.log("out")
    assert "GET / 200" in s.log("err")
    assert "reading its stdout and stderr again" in s.log("err")
    assert "what it wrote since its shared supervisor died is lost" in s.log("err")
    state = s.store.load("web")
    assert state is not None and state.stdout_pipe == s.inode(1) and state.stderr_pipe == s.inode(2)


def test_a_pipe_that_is_not_the_one_its_supervisor_made_is_left_unopened(tmp_path: Any) -> None:
    s = Setup(tmp_path)
    s.orphan(stderr_pipe=s.inode(2) + 1)  # fd 2 holds another pipe now
    s.adopt()
    s.write(1, "still read\n")
    with pytest.raises(OSError) as raised:
        s.write(2, "x")  # nothing reads it: we never opened it
    assert raised.value.errno == errno.ENXIO
    s.house.pump.wait(0)
    s.finish()
    assert "still read" in s.log("out")
    assert "not read: its stderr (no longer the pipe its supervisor made)" in s.log("err")


def test_a_file_at_the_daemons_stdout_is_not_opened(tmp_path: Any) -> None:
    s = Setup(tmp_path)
    plain = os.path.join(s.dir, "plain")
    with open(plain, "w"):
        pass
    s.orphan(stdout_pipe=os.stat(plain).st_ino)  # even with a matching inode: no pipe, no open
    opened: list[str] = []
    real_open = os.open

    def watch_open(path: str, *args: Any, **kw: Any) -> int:
        opened.append(path)
        return real_open(path, *args, **kw)

    os_open = pytest.MonkeyPatch()
    os_open.setattr(os, "open", watch_open)
    try:
        s.adopt(lambda pid, n: plain if n == 1 else s.fifos[n])
    finally:
        os_open.undo()
    assert plain not in opened
    s.finish()
    assert "not read: its stdout (no longer the pipe its supervisor made)" in s.log("err")


def test_a_state_file_without_pipes_on_record_is_adopted_and_its_output_left(tmp_path: Any) -> None:
    s = Setup(tmp_path)
    s.orphan(stdout_pipe="absent", stderr_pipe="absent")
    assert s.adopt() == ["web"]
    with pytest.raises(OSError):
        s.write(1, "x")
    s.finish()
    assert "no pipe of its supervisor's on record" in s.log("err")


def test_each_start_records_the_inodes_of_the_daemons_output_pipes(tmp_path: Any) -> None:
    s = Setup(tmp_path)
    s.orphan()
    spawn, made = s.house.seams.spawn, []

    def spawn_piped(*args: Any, **kw: Any) -> Spawned:
        child = spawn(*args, **kw)
        (out, w1), (err, w2) = os.pipe2(os.O_NONBLOCK), os.pipe2(os.O_NONBLOCK)
        s.writers += [w1, w2]
        made.append((os.fstat(out).st_ino, os.fstat(err).st_ino))
        return Spawned(child.pid, out, err)

    s.house.seams.spawn = spawn_piped
    s.adopt()
    s.world.at(T0 + 2, lambda: s.world.exit(s.daemon.pid, -9))  # restarted at once, with new pipes
    seen: list[RunState] = []
    s.world.at(T0 + 3, lambda: seen.extend(filter(None, [s.store.load("web")])))
    s.finish()
    assert len(made) == 1 and seen and seen[0].pid != s.daemon.pid
    assert (seen[0].stdout_pipe, seen[0].stderr_pipe) == made[0]
    assert seen[0].supervisor_pid == SUPERVISOR


def dead_pid() -> int:
    proc = subprocess.Popen(["/bin/true"])
    proc.wait()
    return proc.pid


@pytest.mark.parametrize("phase", [Phase.RUNNING, Phase.EXITED])
def test_a_daemon_that_ended_while_no_supervisor_ran_is_told_by_the_next_start(tmp_path: Any, phase: str) -> None:
    s = Setup(tmp_path)
    daemon, house = dead_pid(), dead_pid()
    s.store.save(RunState(name="web", phase=phase, boot_id=procs.boot_id(), supervisor_pid=house,
                          supervisor_start=5, pid=daemon, pid_start=7, house="/fake/.old.sock", restarts=2))
    history = previous_history(s.store, "web")  # the tick that starts it, holding its lock
    s.house.take(s.job, FakeLock(s.job.lock_path), history=history)
    seen: list[RunState] = []
    s.world.at(T0 + 1, lambda: seen.extend(filter(None, [s.store.load("web")])))
    s.finish()
    line = (f"pid {daemon} ended while no supervisor ran (after the shared supervisor pid {house} died); "
            "how is unknown")
    if phase == Phase.RUNNING:
        assert line in s.log("err")
        assert seen[0].last_exit_code == UNKNOWN_EXIT and seen[0].restarts == 2
    else:  # its end was recorded: nothing to add
        assert "ended while no supervisor ran" not in s.log("err")
        assert seen[0].last_exit_code is None
