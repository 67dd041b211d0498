"""A fake process world for driving the supervisor without processes, root or sleeps.

The supervisor talks to the world through `Seams` (clock, spawn, scan, reap, wait, send,
sleep); this world implements them over a dict of fake processes and a simulated clock, and
runs scripted events (an exit, a fork, a stop request) when the clock reaches their time. The
way honcho's tests drive its manager: every lifecycle edge pinned in simulated milliseconds.
"""

from __future__ import annotations

import heapq
import itertools
from typing import Callable, Optional

from watchdog_singleton import procs
from watchdog_singleton.spawn import Spawned, SpawnError
from watchdog_singleton.supervisor import Seams

SUPERVISOR = 4_000_000  # above any real pid_max, so /proc never answers for these
TERM, KILL, CONT = 15, 9, 18


class FakeProc:
    def __init__(self, pid: int, ppid: int, token: Optional[str], argv: list[str], born: float) -> None:
        self.pid, self.ppid, self.token, self.argv, self.born = pid, ppid, token, argv, born
        self.ignores_term = False
        self.on_term: Optional[Callable[[], None]] = None  # what it does when it gets SIGTERM
        self.signals: list[int] = []


class FakeWorld:
    def __init__(self) -> None:
        self.now = 1000.0
        self.procs: dict[int, FakeProc] = {}
        self.next_pid = itertools.count(SUPERVISOR + 1)
        self.exited: list[tuple[int, int]] = []  # children of the supervisor, not yet reaped
        self.events: list[tuple[float, int, Callable[[], None]]] = []
        self.order = itertools.count()
        self.spawned: list[FakeProc] = []
        self.tree_at_spawn: list[list[int]] = []  # the job's live processes at each spawn
        self.on_spawn: Callable[[FakeProc], None] = lambda proc: None
        self.spawn_error: Optional[SpawnError] = None
        self.stop_requested: Callable[[], None] = lambda: None

    # -- scripting ---------------------------------------------------------------------------
    def at(self, when: float, action: Callable[[], None]) -> None:
        heapq.heappush(self.events, (when, next(self.order), action))

    def after(self, delay: float, action: Callable[[], None]) -> None:
        self.at(self.now + delay, action)

    def fork(self, parent: int, argv: Optional[list[str]] = None, token: Optional[str] = "inherit") -> FakeProc:
        mother = self.procs[parent]
        child = FakeProc(next(self.next_pid), parent, mother.token if token == "inherit" else token,
                         argv or mother.argv, self.now)
        self.procs[child.pid] = child
        return child

    def exit(self, pid: int, code: int) -> None:
        proc = self.procs.pop(pid, None)
        if proc is None:
            return
        for other in self.procs.values():
            if other.ppid == pid:
                other.ppid = SUPERVISOR  # the supervisor is a subreaper
        if proc.ppid == SUPERVISOR:
            self.exited.append((pid, code))

    def live(self, token: str) -> list[int]:
        return sorted(p.pid for p in self.procs.values() if p.token == token)

    # -- the seams ---------------------------------------------------------------------------
    def seams(self) -> Seams:
        return Seams(clock=lambda: self.now, wall=lambda: self.now, spawn=self.spawn, scan=self.scan,
                     reap=self.reap, wait=self.wait, send=self.send, sleep=self.sleep, pid=SUPERVISOR)

    def spawn(self, argv: list[str], cwd: str, env: dict[str, str], pass_fds: tuple[int, ...] = (),
              capture: bool = True) -> Spawned:
        token = env[procs.TOKEN_ENV]
        self.tree_at_spawn.append(self.live(token))
        if self.spawn_error is not None:
            raise self.spawn_error
        proc = FakeProc(next(self.next_pid), SUPERVISOR, token, argv, self.now)
        self.procs[proc.pid] = proc
        self.spawned.append(proc)
        self.on_spawn(proc)
        return Spawned(proc.pid, None, None)

    def scan(self) -> dict[int, procs.Proc]:
        table = {SUPERVISOR: procs.Proc(SUPERVISOR, 1, 1, "S", 0, None)}
        for p in self.procs.values():
            table[p.pid] = procs.Proc(p.pid, p.ppid, int(p.born * 100), "S", 0, p.token)
        return table

    def reap(self) -> list[tuple[int, int]]:
        done, self.exited = self.exited, []
        return done

    def send(self, pid: int, sig: int) -> None:
        proc = self.procs.get(pid)
        if proc is None:
            raise ProcessLookupError(pid)
        proc.signals.append(sig)
        if sig == KILL:
            self.exit(pid, -KILL)
        elif sig == TERM and not proc.ignores_term:
            if proc.on_term:
                proc.on_term()
            else:
                self.exit(pid, -TERM)

    def sleep(self, seconds: float) -> None:
        self.wait(seconds)

    def wait(self, timeout: float) -> None:
        """Advance the clock to the next event or by `timeout`, whichever comes first."""
        until = self.now + timeout
        if self.events and self.events[0][0] <= until:
            when, _, action = heapq.heappop(self.events)
            self.now = max(self.now, when)
            action()
        else:
            self.now = until
