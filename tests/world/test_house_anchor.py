"""The anchor above the shared resident (supervisor/anchor.py, anchorlink.py), driven without
processes: the anchor's decisions with a recorded link, and the resident's side through the fake
world, the two joined by a wire that hands each message straight to the other end. No sleeps;
every time below is simulated."""

from __future__ import annotations

import os
from typing import Any, Optional

import pytest
from fakeworld import SUPERVISOR, TERM, FakeLock, FakeProc, FakeWorld

from watchdog_singleton.job.model import Job
from watchdog_singleton.proc.procs import UNKNOWN_EXIT
from watchdog_singleton.proc.spawn import Spawned
from watchdog_singleton.state.phases import Phase
from watchdog_singleton.state.store import RunState, StateStore
from watchdog_singleton.supervisor.anchor import STORM_STARTS, Anchor
from watchdog_singleton.supervisor.anchorlink import LOST, AnchorLink
from watchdog_singleton.supervisor.house import SIGTERM, House

T0 = 1000.0
RESIDENT, NEW_RESIDENT = 3_999_001, 3_999_002
DEAD_HOUSE = 3_999_999

Message = tuple[Optional[dict[str, Any]], list[int]]


class Wire:
    """Both ends of the socketpair in one process: what the resident sends goes to the anchor's
    `message` at once; what the anchor sends waits in `inbox` for the resident to read (its poll
    would say it is readable: the fake world calls its reader right after)."""

    def __init__(self, world: FakeWorld) -> None:
        self.world = world
        self.anchor: Optional[Anchor] = None
        self.link: Optional[AnchorLink] = None
        self.inbox: list[Message] = []
        self.sent: list[dict[str, Any]] = []  # what the resident said, in order
        self.read_fd, self.write_fd = os.pipe()  # a descriptor for the resident's poll; never readable

    # the resident's end (AnchorLink's socket and housewire functions)
    def fileno(self) -> int:
        return self.read_fd

    def settimeout(self, seconds: Optional[float]) -> None:
        pass

    def close(self) -> None:
        pass

    def send(self, sock: Any, message: dict[str, Any], fds: tuple[int, ...] = ()) -> None:
        if self.anchor is None:
            raise BrokenPipeError("the anchor is gone")
        self.sent.append(message)
        self.anchor.message(message, list(fds))

    def receive(self, sock: Any) -> Message:
        return self.inbox.pop(0) if self.inbox else (None, [])

    # the anchor's end (anchor.Link)
    def anchor_send(self, message: dict[str, Any], fds: tuple[int, ...] = ()) -> None:
        self.inbox.append((message, list(fds)))
        if message.get("op") == "exit":
            self.world.after(0, self._deliver)

    def _deliver(self) -> None:
        if self.inbox and self.link is not None:
            self.link._read()


class AnchorEnd:
    """The anchor's Link over a Wire."""

    def __init__(self, wire: Wire) -> None:
        self.wire = wire
        self.closed = False

    def fileno(self) -> int:
        return -1

    def send(self, message: dict[str, Any], fds: tuple[int, ...] = ()) -> None:
        if self.closed:
            raise BrokenPipeError("closed")
        self.wire.anchor_send(message, fds)

    def receive(self) -> Message:
        return None, []

    def close(self) -> None:
        self.closed = True


class HeldLock(FakeLock):
    """A job's lock with its two descriptors (real ones: they cross the wire as numbers)."""

    def __init__(self, path: str, events: list[str]) -> None:
        super().__init__(path)
        self.events = events
        self.fds = os.pipe()

    def inheritable_fds(self) -> tuple[int, ...]:
        return self.fds

    def release(self) -> None:
        super().release()
        self.events.append("lock released")


class Setup:
    def __init__(self, tmp_path: Any) -> None:
        self.dir = str(tmp_path)
        self.root = os.path.join(self.dir, "state")
        self.world = FakeWorld()
        self.store = StateStore(self.root)
        self.jobs: dict[str, Job] = {}
        self.events: list[str] = []  # the anchor's closes and the locks' releases, in order
        self.pipes: dict[int, tuple[int, int]] = {}  # each spawned daemon's output read ends
        self.starts: list[float] = []
        self.wire = Wire(self.world)
        end: Any = AnchorEnd(self.wire)
        self.anchor = Anchor(RESIDENT, end, self._start, self._is_child, close=self._close,
                             clock=lambda: self.world.now)
        self.wire.anchor = self.anchor
        self.house = self.resident()
        spawn = self.world.spawn

        def spawn_piped(*args: Any, **kwargs: Any) -> Spawned:
            child = spawn(*args, **kwargs)
            out, err = os.pipe2(os.O_NONBLOCK), os.pipe2(os.O_NONBLOCK)
            self.pipes[child.pid] = (out[0], err[0])
            return Spawned(child.pid, out[0], err[0])
        self.world.spawn = spawn_piped  # type: ignore[method-assign]
        self.house.seams.spawn = spawn_piped

    def resident(self) -> House:
        seams = self.world.seams()
        seams.load_job = lambda root, name: self.jobs.get(name)
        house = House(self.store, seams=seams, socket_path="/fake/.house.sock")
        house.open()
        link = AnchorLink(house, self.wire, make_lock=self._lock)  # type: ignore[arg-type]
        link.send, link.receive = self.wire.send, self.wire.receive
        self.wire.link = link
        link.open()
        return house

    def _start(self) -> tuple[int, Any]:
        self.starts.append(self.world.now)
        return NEW_RESIDENT + len(self.starts), AnchorEnd(self.wire)

    def _is_child(self, pid: int) -> bool:
        return pid in self.world.procs  # the daemons re-parented to the anchor

    def _close(self, fd: int) -> None:
        self.events.append(f"anchor closed {fd}")

    def _lock(self, job: Job, fds: list[int]) -> HeldLock:
        lock = HeldLock(job.lock_path, self.events)
        lock.fds = (fds[0], fds[1])
        return lock

    def job(self, name: str, **options: Any) -> Job:
        logs = os.path.join(self.dir, "logs")
        job = Job(name=name, command=["/bin/daemon", name], workdir="/", lock_dir=os.path.join(self.dir, "locks"),
                  stdout_log=os.path.join(logs, f"{name}.out"), stderr_log=os.path.join(logs, f"{name}.err"),
                  shared=True, **options)
        self.jobs[name] = job
        return job

    def take(self, name: str, **options: Any) -> HeldLock:
        lock = HeldLock(self.job(name, **options).lock_path, self.events)
        self.house.take(self.jobs[name], lock)
        return lock

    def daemon(self, name: str) -> FakeProc:
        [proc] = [self.world.procs[pid] for pid in self.world.live(self.jobs[name].lock_path)]
        return proc

    def births(self, name: str) -> list[float]:
        token = self.jobs[name].lock_path
        return [round(p.born - T0, 3) for p in self.world.spawned if p.token == token]

    def state(self, name: str) -> RunState:
        state = self.store.load(name)
        assert state is not None
        return state

    def log(self, name: str) -> str:
        with open(self.jobs[name].stderr_log) as f:
            return f.read()

    def kill_resident(self) -> House:
        """kill -9 of the resident: its daemons become the anchor's children, the anchor reaps it and
        starts a new resident, which takes what the anchor hands it (housemain.py does the same)."""
        for proc in self.world.procs.values():
            proc.ppid = 1  # not the new resident's children
        self.anchor.reaped(self.anchor.resident or RESIDENT, -9)
        self.house = self.resident()
        self.house.seams.spawn = self.world.spawn
        assert self.wire.link is not None
        self.wire.link.take_handed(self.root)
        return self.house

    def kill(self, proc: FakeProc, code: int = -9) -> None:
        """A daemon of the anchor's ends: the anchor reaps it (not the resident)."""
        self.world.exit(proc.pid, code)
        self.anchor.reaped(proc.pid, code)

    def stop_all_at(self, when: float) -> None:
        self.world.at(when, lambda: self.house.wakeups.signals.append(SIGTERM))


def run_until(s: Setup, when: float) -> None:
    s.stop_all_at(when)
    s.house.run()


# -- the anchor's decisions -------------------------------------------------------------------
def test_each_daemon_start_hands_the_anchor_its_lock_and_pipes_in_place_of_the_last(tmp_path: Any) -> None:
    s = Setup(tmp_path)
    lock = s.take("a")
    s.house._turn()  # the first start
    first = s.daemon("a")
    held = s.anchor.held["a"]
    assert held.pid == first.pid and held.fds == [*lock.fds, *s.pipes[first.pid]]
    s.world.at(T0 + 2, lambda: s.world.exit(first.pid, 1))
    run_until(s, T0 + 10)
    [_, second] = s.world.spawned
    assert f"anchor closed {s.pipes[first.pid][0]}" in s.events, "the first start's set was kept"
    assert s.events.index(f"anchor closed {s.pipes[second.pid][0]}") < s.events.index("lock released"), \
        "the lock was let go while the anchor still held it"
    assert s.anchor.held == {} and [m["op"] for m in s.wire.sent] == ["hold", "hold", "hold", "drop"]


def test_a_stop_of_one_job_takes_back_its_set_only(tmp_path: Any) -> None:
    s = Setup(tmp_path)
    s.take("a")
    s.take("b")
    answers: list[bool] = []
    s.world.at(T0 + 1, lambda: s.house.stop_job("a", answers.append))
    seen: dict[str, Any] = {}
    s.world.at(T0 + 2, lambda: seen.update(held=sorted(s.anchor.held)))
    run_until(s, T0 + 5)
    assert answers == [True] and seen["held"] == ["b"]


def test_a_killed_resident_is_replaced_at_once_and_handed_every_set(tmp_path: Any) -> None:
    s = Setup(tmp_path)
    s.take("a")
    s.take("b")
    s.take("c")
    s.house._turn()
    a, b, c = s.daemon("a"), s.daemon("b"), s.daemon("c")
    s.world.exit(c.pid, 0)  # c's end was reaped by the resident before it died: nothing to adopt
    s.world.exit(b.pid, 3)  # b ended after the resident did: the anchor reaped it, its status waits
    s.anchor.pending[b.pid] = 3
    s.wire.inbox.clear()
    s.events.clear()
    s.anchor.reaped(RESIDENT, -9)
    assert s.starts == [T0], "no new resident at once"
    handed = [m for m, _ in s.wire.inbox if m is not None]
    assert [(m["name"], m["pid"], m["code"]) for m in handed[:-1]] == [("a", a.pid, None), ("b", b.pid, 3),
                                                                         ("c", None, None)]
    assert handed[-1] == {"op": "end"} and all(len(fds) == 4 for _, fds in s.wire.inbox[:-1])
    assert not s.anchor.done and not any(e.startswith("anchor closed") for e in s.events)


def test_a_resident_that_ends_holding_nothing_ends_the_anchor(tmp_path: Any) -> None:
    s = Setup(tmp_path)
    s.take("a")
    run_until(s, T0 + 1)  # SIGTERM: every job stopped and given back
    s.anchor.reaped(RESIDENT, 0)
    assert s.anchor.done and s.starts == [] and not s.anchor.gave_up


def test_a_stray_anchor_whose_resident_died_before_any_job_exits(tmp_path: Any) -> None:
    s = Setup(tmp_path)
    s.anchor.reaped(RESIDENT, -9)
    assert s.anchor.done and s.starts == []


def test_the_anchor_gives_up_when_each_new_resident_dies_at_once(tmp_path: Any) -> None:
    s = Setup(tmp_path)
    s.take("a")
    s.house._turn()
    for _ in range(STORM_STARTS):
        s.anchor.reaped(s.anchor.resident or 0, 1)
        assert not s.anchor.done
        s.world.now += 1
    s.anchor.reaped(s.anchor.resident or 0, 1)
    assert s.anchor.done and s.anchor.gave_up and s.anchor.held == {}
    assert len(s.starts) == STORM_STARTS


# -- the new resident ---------------------------------------------------------------------------
def test_the_new_resident_adopts_the_same_daemons_and_reads_their_pipes(tmp_path: Any) -> None:
    s = Setup(tmp_path)
    s.take("a")
    s.take("b")
    s.house._turn()
    a, b = s.daemon("a"), s.daemon("b")
    house = s.kill_resident()
    assert sorted(house.members) == ["a", "b"] and len(s.world.spawned) == 2, "a daemon was started again"
    for name, proc in (("a", a), ("b", b)):
        state = s.state(name)
        assert state.pid == proc.pid and state.phase == Phase.RUNNING and state.supervisor_pid == SUPERVISOR
        assert set(s.pipes[proc.pid]) <= set(house.pump.sinks), f"{name}'s pipes are not read"
        assert "through its anchor" in state.message
    assert [m["op"] for m in s.wire.sent[-2:]] == ["hold", "hold"], "the hand-over was sent back"
    run_until(s, T0 + 5)
    assert f"adopted running pid {a.pid} from its anchor" in s.log("a")


def test_an_adopted_daemons_exit_status_comes_from_the_anchor_and_it_restarts_at_once(tmp_path: Any) -> None:
    s = Setup(tmp_path)
    s.take("a")
    s.take("b")
    s.house._turn()
    a, b = s.daemon("a"), s.daemon("b")
    s.kill_resident()
    seen: dict[str, RunState] = {}
    s.world.at(T0 + 3, lambda: s.kill(a, -9))
    s.world.at(T0 + 4, lambda: seen.update(a=s.state("a"), b=s.state("b")))
    run_until(s, T0 + 10)
    assert s.births("a") == [0.0, 3.0] and s.births("b") == [0.0]
    assert seen["a"].last_exit_code == -9 != UNKNOWN_EXIT and seen["a"].phase == Phase.RUNNING
    assert seen["b"].pid == b.pid and b.signals == [TERM]
    assert s.anchor.held.get("a") is None, "the stop at the end took nothing back"


def test_an_exit_between_the_two_residents_is_known_and_restarted(tmp_path: Any) -> None:
    s = Setup(tmp_path)
    s.take("a")
    s.house._turn()
    a = s.daemon("a")
    s.world.exit(a.pid, 0)
    s.anchor.pending[a.pid] = 4  # reaped by the anchor while no resident was there
    s.kill_resident()
    seen: dict[str, RunState] = {}
    s.world.at(T0 + 1, lambda: seen.update(a=s.state("a")))
    run_until(s, T0 + 5)
    assert s.births("a") == [0.0, 0.0] and seen["a"].last_exit_code == 4 and seen["a"].phase == Phase.RUNNING


def test_a_job_whose_daemon_ended_under_the_dead_resident_is_started_again(tmp_path: Any) -> None:
    s = Setup(tmp_path)
    s.take("a")
    s.house._turn()
    a = s.daemon("a")
    s.world.exit(a.pid, 1)  # reaped by the dead resident: not the anchor's child
    s.kill_resident()
    assert "a" in s.house.members
    run_until(s, T0 + 5)
    assert len(s.births("a")) == 2


def test_a_lost_anchor_is_said_once_and_every_job_runs_on(tmp_path: Any) -> None:
    s = Setup(tmp_path)
    s.take("a")
    s.take("b")
    s.house._turn()
    a, b = s.daemon("a"), s.daemon("b")
    s.wire.anchor = None  # kill -9 of the anchor: EOF on the link
    s.world.at(T0 + 1, s.wire._deliver)
    s.wire.inbox.append((None, []))
    s.world.at(T0 + 2, lambda: s.world.exit(a.pid, 1))  # a restart after: nothing sent, nothing fails
    run_until(s, T0 + 10)
    assert s.births("a") == [0.0, 2.0] and s.births("b") == [0.0]
    assert b.signals == [TERM] and s.house.failures == [LOST]
    assert s.log("a").count(LOST) == 1 and s.log("b").count(LOST) == 1


@pytest.mark.parametrize("periodic", [True])
def test_a_periodic_job_is_not_handed_to_the_anchor(tmp_path: Any, periodic: bool) -> None:
    s = Setup(tmp_path)
    s.take("p", periodic=periodic, every=60.0)
    s.house._turn()
    assert "p" not in s.anchor.held
    run_until(s, T0 + 1)


def test_a_resident_that_let_go_of_its_anchor_ends_it_and_no_new_one_is_started(tmp_path: Any) -> None:
    """It waited too long for a stopped anchor's answer and runs on alone: when it exits later, no
    new resident may start for jobs it stopped itself."""
    s = Setup(tmp_path)
    s.take("a")
    s.house._turn()
    s.anchor.message(None, [])  # EOF while the resident lives
    assert s.anchor.timeout() == 2.0 and not s.anchor.done
    s.world.now += 1
    s.anchor.look()
    assert not s.anchor.done
    s.world.now += 1
    s.anchor.look()
    assert s.anchor.done and s.anchor.held == {} and s.starts == []


def test_eof_from_a_dying_resident_is_followed_by_its_new_one(tmp_path: Any) -> None:
    s = Setup(tmp_path)
    s.take("a")
    s.house._turn()
    s.anchor.message(None, [])  # its descriptors close before it is a zombie
    s.world.now += 0.01
    s.anchor.reaped(RESIDENT, -9)
    s.anchor.look()
    assert s.starts == [T0 + 0.01] and not s.anchor.done and s.anchor.timeout() is None


def test_the_anchor_loads_only_its_module_and_the_wire() -> None:
    """It lives as long as the resident, for every user of shared mode: kept small."""
    import subprocess
    import sys

    import watchdog_singleton

    parent = os.path.dirname(os.path.dirname(os.path.abspath(watchdog_singleton.__file__)))
    probe = (f"import sys; sys.path.insert(0, {parent!r}); from watchdog_singleton.supervisor import anchor; "
             "print(sorted(m for m in sys.modules if m.startswith('watchdog_singleton')))")
    out = subprocess.run([sys.executable, "-I", "-S", "-c", probe], capture_output=True, text=True, timeout=60,
                         check=True).stdout
    assert out.split() == ["['watchdog_singleton',", "'watchdog_singleton.supervisor',",
                           "'watchdog_singleton.supervisor.anchor',", "'watchdog_singleton.supervisor.housewire']"]


def test_an_adopted_daemons_leftovers_are_looked_for_though_every_child_of_ours_is_known(tmp_path: Any) -> None:
    """The old tree's leftovers are the anchor's children, not ours: that the new resident's own
    children are only other jobs' daemons says nothing about them, so /proc is scanned."""
    s = Setup(tmp_path)
    s.take("a")
    s.house._turn()
    a = s.daemon("a")
    leftover = s.world.fork(a.pid)  # carries a's token
    s.kill_resident()
    s.take("c")  # a daemon the new resident starts: its child, which it knows
    s.world.at(T0 + 3, lambda: s.kill(a, -9))
    run_until(s, T0 + 10)
    assert TERM in leftover.signals and leftover.pid in s.world.deaths
    again = [p for p in s.world.spawned if p.token == s.jobs["a"].lock_path and p.pid != a.pid]
    assert again and again[0].born >= s.world.deaths[leftover.pid], "restarted beside the old tree's leftover"


def test_an_answer_the_resident_no_longer_reads_is_a_hang_up_too(tmp_path: Any) -> None:
    """A stopped anchor, continued after its resident let go: its answer to a drop finds the link
    closed before it reads the EOF. That is the same hang-up: it must end, not keep the locks."""
    s = Setup(tmp_path)
    s.take("a")
    s.take("b")
    s.house._turn()
    assert s.anchor.link is not None
    s.anchor.link.close()  # the resident's end went while we were stopped
    s.anchor.message({"op": "drop", "name": "b"}, [])  # read late: our answer cannot be sent
    assert s.anchor.timeout() == 2.0 and not s.anchor.done
    s.world.now += 2
    s.anchor.look()
    assert s.anchor.done and s.anchor.held == {} and s.starts == []


def test_a_daemon_handed_over_by_an_anchor_that_is_gone_is_watched_by_its_pidfd(tmp_path: Any) -> None:
    """Its end came from the anchor (its parent); once the link is lost, the pidfd tells it."""
    s = Setup(tmp_path)
    s.take("a")
    s.take("b")
    s.house._turn()
    a, b = s.daemon("a"), s.daemon("b")
    s.kill_resident()
    s.wire.anchor = None  # the anchor goes: EOF on the link
    s.wire.inbox.append((None, []))
    s.world.at(T0 + 1, s.wire._deliver)
    s.world.at(T0 + 2, lambda: s.world.exit(a.pid, 1))  # nobody reaps it for us now
    run_until(s, T0 + 10)
    assert s.births("a") == [0.0, 2.0] and s.births("b") == [0.0]
    assert b.signals == [TERM]
