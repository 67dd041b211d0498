"""A shared job's live resident that does not answer (its socket deleted, or it is stopped) is never
worked around, and no stop ever signals our own processes above the jobs (the resident, its anchor,
a cluster watcher), which hold every shared job's lock. The house's SIGHUP in the fake world; the
commands' side and the stop policy with real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from typing import Any, Iterator

import pytest
from conftest import wait_for
from fakeworld import T0
from housekit import HouseSetup

from watchdog_singleton.cluster.watcher import BOOT as WATCHER_BOOT
from watchdog_singleton.commands import common
from watchdog_singleton.errors import FAILED, UserError
from watchdog_singleton.proc import procs
from watchdog_singleton.proc.stop import stop_job
from watchdog_singleton.state.store import RunState
from watchdog_singleton.supervisor.anchor import BOOT as ANCHOR_BOOT
from watchdog_singleton.supervisor.house import SIGHUP
from watchdog_singleton.tick.becoming import HOUSE_BOOT
from watchdog_singleton.tick.launch import BOOT as RESIDENT_BOOT


def test_sighup_makes_the_shared_resident_look_at_its_socket_and_locks_at_once(tmp_path: Any) -> None:
    s = HouseSetup(tmp_path)
    s.take(s.job("b1"))
    s.take(s.job("b2"))
    looked: list[float] = []
    s.house.looks.append(lambda: looked.append(s.world.now))
    s.world.at(T0 + 5, lambda: s.house.wakeups.signals.append(SIGHUP))
    s.stop_all_at(T0 + 20)
    s.house.run()
    assert [when for when in looked if when > T0] == [T0 + 5], looked  # not at the minute's look


# -- the predicate, and the stop policy that uses it ---------------------------------------------

def spawn(program: str, *args: str, **kwargs: Any) -> subprocess.Popen[bytes]:
    """`python -c program`, once it says it is ready (its SIGHUP handler set)."""
    proc = subprocess.Popen([sys.executable, "-I", "-S", "-c", program, *args], stdout=subprocess.PIPE, **kwargs)
    assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
    return proc


@pytest.fixture
def started() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs_: list[subprocess.Popen[bytes]] = []
    yield procs_
    for proc in procs_:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


SLEEPER = ("import signal, time\nsignal.signal(signal.SIGHUP, signal.SIG_IGN)\nprint('ready', flush=True)\n"
           "time.sleep(120)\n")


def test_our_processes_above_the_jobs_are_known_by_their_program_and_a_jobs_are_not(
        started: list[subprocess.Popen[bytes]]) -> None:
    # Each as started (`-c BOOT`), but sleeping instead: the marker is in the program they run.
    ours = [spawn(SLEEPER + "# " + boot) for boot in (HOUSE_BOOT, ANCHOR_BOOT, WATCHER_BOOT)]
    theirs = [spawn(SLEEPER + "# " + RESIDENT_BOOT), spawn(SLEEPER, HOUSE_BOOT)]  # a job's supervisor; an argument
    started.extend(ours + theirs)
    assert [procs.is_infrastructure(p.pid) for p in ours] == [True, True, True]
    assert [procs.is_infrastructure(p.pid) for p in theirs] == [False, False]


def test_a_stop_by_lock_holders_never_signals_the_anchor_or_the_resident(
        tmp_path: Any, started: list[subprocess.Popen[bytes]]) -> None:
    lock = tmp_path / "k1.lock"
    lock.write_bytes(b"")
    with open(lock, "rb") as held:  # each inherits a copy, as the anchor and the resident hold every lock
        anchor = spawn(SLEEPER + "# " + ANCHOR_BOOT, pass_fds=(held.fileno(),))
        resident = spawn(SLEEPER + "# " + HOUSE_BOOT, pass_fds=(held.fileno(),))
        daemon = spawn(SLEEPER, pass_fds=(held.fileno(),))
    started.extend((anchor, resident, daemon))
    wait_for(lambda: daemon.pid in procs.holding_file(procs.scan(), str(lock)), 10, what="the holders")
    stopped = stop_job("no-such-token", 1.0, holders=str(lock), exclude_self=False)
    assert stopped.found == 1 and daemon.wait(10) == -signal.SIGTERM
    assert anchor.poll() is None and resident.poll() is None


# -- the commands: a live resident that does not answer --------------------------------------

def shared_state(tmp_path: Any, resident: subprocess.Popen[bytes], daemon: subprocess.Popen[bytes]) -> RunState:
    boot = procs.boot_id()
    return RunState(name="b1", phase="running", boot_id=boot, supervisor_pid=resident.pid,
                    supervisor_start=procs.start_time(resident.pid), pid=daemon.pid,
                    pid_start=procs.start_time(daemon.pid), lock_path=str(tmp_path / "b1.lock"),
                    house=str(tmp_path / ".house-x.sock"))


@pytest.fixture
def quick(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(common, "ANSWER_WAIT", 0.5, raising=False)
    monkeypatch.setattr(common, "LOOK_WAIT", 1.0, raising=False)


def test_stop_of_a_shared_job_whose_live_resident_has_no_socket_changes_nothing(
        tmp_path: Any, started: list[subprocess.Popen[bytes]], quick: None) -> None:
    resident = spawn(SLEEPER + "# " + HOUSE_BOOT)
    daemon = spawn(SLEEPER)
    started.extend((resident, daemon))
    state = shared_state(tmp_path, resident, daemon)
    with pytest.raises(UserError) as caught:
        common.stop_processes(state.lock_path, state, 1.0)
    message = str(caught.value)
    assert caught.value.exit_code == FAILED and "\n" not in message
    assert f"shared resident pid {resident.pid}" in message and "has no socket" in message
    assert "nothing changed" in message and f"`kill {resident.pid}`" in message
    assert daemon.poll() is None and resident.poll() is None, "the job's tree was stopped around its resident"


class Resident:
    """A stand-in shared resident and its job's daemon, with what the command asked it."""

    def __init__(self, tmp_path: Any, started: list[subprocess.Popen[bytes]]) -> None:
        self.proc = spawn(SLEEPER + "# " + HOUSE_BOOT)
        self.daemon = spawn(SLEEPER)
        started.extend((self.proc, self.daemon))
        self.state = shared_state(tmp_path, self.proc, self.daemon)
        self.asked: list[float] = []

    def stop(self) -> None:
        """SIGSTOP, and until it has taken: kill() returns before the process has stopped."""
        os.kill(self.proc.pid, signal.SIGSTOP)
        wait_for(lambda: getattr(procs.read_proc(self.proc.pid), "state", "") in ("T", "t"), 10,
                 what="the resident to stop")

    def reached(self) -> str:
        """reach_house's refusal (it must refuse), the resident continued after it either way."""
        try:
            with pytest.raises(UserError) as caught:
                common.reach_house(self.state)
            return str(caught.value)
        finally:
            os.kill(self.proc.pid, signal.SIGCONT)


def test_a_stopped_resident_is_named_as_stopped_and_its_job_is_left_alone(
        tmp_path: Any, started: list[subprocess.Popen[bytes]], quick: None) -> None:
    r = Resident(tmp_path, started)
    r.stop()
    refused = r.reached()
    assert "is stopped (SIGSTOP)" in refused and f"`kill -CONT {r.proc.pid}`" in refused
    assert r.daemon.poll() is None


def test_a_stopped_resident_is_not_asked_nor_waited_for(
        tmp_path: Any, started: list[subprocess.Popen[bytes]], monkeypatch: pytest.MonkeyPatch) -> None:
    r = Resident(tmp_path, started)

    def ping(state: Any, wait: float) -> str:
        r.asked.append(wait)
        return "gives no answer"
    monkeypatch.setattr(common, "_ping", ping)
    r.stop()
    assert "is stopped (SIGSTOP)" in r.reached() and r.asked == []


def test_a_resident_stopped_while_asked_is_named_without_waiting_out_the_look(
        tmp_path: Any, started: list[subprocess.Popen[bytes]], monkeypatch: pytest.MonkeyPatch) -> None:
    r = Resident(tmp_path, started)

    def ping(state: Any, wait: float) -> str:
        r.asked.append(wait)
        if len(r.asked) == 1:  # it goes quiet at the first question, stopped by its owner
            r.stop()
        return "gives no answer"
    monkeypatch.setattr(common, "_ping", ping)
    assert "is stopped (SIGSTOP)" in r.reached() and len(r.asked) == 1, r.asked
    assert r.daemon.poll() is None


ANSWERS_ON_SIGHUP = textwrap.dedent("""
    import _socket, signal, sys, time
    sys.path.insert(0, sys.argv[2])
    from watchdog_singleton.supervisor.housewire import receive, send
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
    print("ready", flush=True)
    signal.sigwait({signal.SIGHUP})  # no socket until SIGHUP, as a resident whose socket a /tmp cleaner deleted
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    sock.bind(sys.argv[1])
    sock.listen(8)
    while True:
        fd, _ = sock._accept()
        conn = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM, 0, fd)
        receive(conn)
        send(conn, {"pid": 0, "jobs": []})
        conn.close()
""")


def test_a_resident_without_its_socket_is_told_to_look_and_asked_again(
        tmp_path: Any, started: list[subprocess.Popen[bytes]], quick: None) -> None:
    daemon = spawn(SLEEPER)
    package_parent = os.path.dirname(common.__file__.rsplit("/commands/", 1)[0])
    resident = spawn(ANSWERS_ON_SIGHUP + "# " + HOUSE_BOOT, str(tmp_path / ".house-x.sock"), package_parent)
    started.extend((resident, daemon))
    common.reach_house(shared_state(tmp_path, resident, daemon))  # SIGHUP, its socket back, an answer
    assert os.path.exists(tmp_path / ".house-x.sock")


def test_a_changed_definition_the_live_resident_does_not_take_is_told_not_dropped(
        tmp_path: Any, started: list[subprocess.Popen[bytes]], monkeypatch: pytest.MonkeyPatch) -> None:
    r = Resident(tmp_path, started)
    resident, state = r.proc, r.state
    monkeypatch.setattr(common, "ask_house", lambda *args: None)
    assert common.tell_to_reload(state) is False  # alive, no answer: install and apply warn
    warning = common.not_reloaded(state.name)
    assert warning.startswith("warning: ") and "\n" not in warning and f"restart {state.name}" in warning
    resident.kill()
    resident.wait()
    assert common.tell_to_reload(state) is None  # nothing runs that could take it: nothing to say
