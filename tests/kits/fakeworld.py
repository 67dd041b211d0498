"""A fake process world for driving the supervisor without processes, root or sleeps.

The supervisor talks to the world through `Seams` (clock, spawn, scan, reap, wait, send,
sleep); this world implements them over a dict of fake processes and a simulated clock, and
runs scripted events (an exit, a fork, a stop request) when the clock reaches their time. The
way honcho's tests drive its manager: every lifecycle edge pinned in simulated milliseconds.
"""

from __future__ import annotations

import heapq
import itertools
import os
from typing import Any, Callable, Optional

from watchdog_singleton.cluster import Grant, LeaseUnavailable
from watchdog_singleton.envvars import TOKEN_ENV
from watchdog_singleton.job.model import Job
from watchdog_singleton.proc import procs
from watchdog_singleton.proc.spawn import Spawned, SpawnError
from watchdog_singleton.state.store import StateStore
from watchdog_singleton.supervisor.core import Seams, Supervisor

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
        self.now = 1000.0  # the monotonic clock
        self.wall_offset = 0.0  # the wall clock is now + wall_offset (step_wall moves it)
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
        self.envs: list[dict[str, str]] = []  # each spawn's environment
        self.deaths: dict[int, float] = {}  # pid -> when it exited
        self.scans = 0  # how often the supervisor listed every process
        self.exit_watches: dict[int, list[Callable[[], None]]] = {}  # pidfds on processes not ours
        self.lists_children = True  # False: a kernel without /proc/self/task/*/children

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

    def stray(self, token: Optional[str], argv: list[str], ppid: int = 1) -> FakeProc:
        """A process that is no child of the supervisor (a dead supervisor's daemon, now init's)."""
        proc = FakeProc(next(self.next_pid), ppid, token, argv, self.now)
        self.procs[proc.pid] = proc
        return proc

    def exit(self, pid: int, code: int) -> None:
        proc = self.procs.pop(pid, None)
        if proc is None:
            return
        self.deaths[pid] = self.now
        for on_exit in self.exit_watches.pop(pid, []):
            on_exit()  # its pidfd is readable
        # Orphans go to the nearest subreaper above: the supervisor, if the dead process descends
        # from it; else init (a stray's, e.g. an adopted daemon's, whose supervisor died).
        reaper = SUPERVISOR if self._descends_from_supervisor(proc) else 1
        for other in self.procs.values():
            if other.ppid == pid:
                other.ppid = reaper
        if proc.ppid == SUPERVISOR:
            self.exited.append((pid, code))

    def _descends_from_supervisor(self, proc: FakeProc) -> bool:
        seen: set[int] = set()
        while proc.ppid not in (SUPERVISOR, 1, 0) and proc.ppid not in seen and proc.ppid in self.procs:
            seen.add(proc.ppid)
            proc = self.procs[proc.ppid]
        return proc.ppid == SUPERVISOR

    def step_wall(self, seconds: float) -> None:
        """A step of the wall clock alone (NTP, `date -s`): the monotonic clock goes on."""
        self.wall_offset += seconds

    def live(self, token: str) -> list[int]:
        return sorted(p.pid for p in self.procs.values() if p.token == token)

    # -- the seams ---------------------------------------------------------------------------
    def seams(self) -> Seams:
        return Seams(clock=lambda: self.now, wall=lambda: self.now + self.wall_offset, spawn=self.spawn, scan=self.scan,
                     reap=self.reap, has_children=self.has_children, children=self.children, wait=self.wait,
                     send=self.send, sleep=self.sleep, pid=SUPERVISOR,
                     lease_clock=lambda: self.now, threads=False, boot_id=lambda: "fake-boot",
                     start_time=self.start_time, strict=True, alive=self.alive, watch_exit=self.watch_exit)

    def spawn(self, argv: list[str], cwd: str, env: dict[str, str], pass_fds: tuple[int, ...] = (),
              capture: bool = True) -> Spawned:
        token = env[TOKEN_ENV]
        self.tree_at_spawn.append(self.live(token))
        self.envs.append(dict(env))
        if self.spawn_error is not None:
            raise self.spawn_error
        proc = FakeProc(next(self.next_pid), SUPERVISOR, token, argv, self.now)
        self.procs[proc.pid] = proc
        self.spawned.append(proc)
        self.on_spawn(proc)
        return Spawned(proc.pid, None, None)

    def has_children(self) -> bool:
        """As waitid(P_ALL, WNOHANG|WNOWAIT) not failing with ECHILD: a living or unreaped child."""
        return bool(self.exited) or any(p.ppid == SUPERVISOR for p in self.procs.values())

    def children(self) -> Optional[list[int]]:
        """As /proc/self/task/*/children: the supervisor's children, living or not yet reaped."""
        if not self.lists_children:
            return None
        living = {p.pid for p in self.procs.values() if p.ppid == SUPERVISOR}
        return sorted(living | {pid for pid, _code in self.exited})

    def scan(self) -> dict[int, procs.Proc]:
        self.scans += 1
        table = {SUPERVISOR: procs.Proc(SUPERVISOR, 1, 1, "S", 0, None)}
        for p in self.procs.values():
            table[p.pid] = procs.Proc(p.pid, p.ppid, int(p.born * 100), "S", 0, p.token)
        return table

    def start_time(self, pid: int) -> Optional[int]:
        """As procs.start_time of a real pid: None for one that is gone (or never was)."""
        proc = self.procs.get(pid)
        return int(proc.born * 100) if proc is not None else 1 if pid == SUPERVISOR else None

    def alive(self, pid: Optional[int], start: Optional[int], boot: Optional[str] = None) -> bool:
        """As procs.is_alive: that process of this boot runs."""
        return bool(pid) and start is not None and boot in (None, "", "fake-boot") and \
            self.start_time(pid or 0) == start

    def watch_exit(self, pid: int, on_exit: Callable[[], None]) -> Callable[[], None]:
        """As a pidfd in the resident's poll: `on_exit()` once `pid` exits; the cancel."""
        if pid not in self.procs:
            raise ProcessLookupError(pid)
        self.exit_watches.setdefault(pid, []).append(on_exit)

        def cancel() -> None:
            watches = self.exit_watches.get(pid, [])
            if on_exit in watches:
                watches.remove(on_exit)
        return cancel

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


class FakeDatabase:
    """The cluster lease's rows, in memory, on the world's clock (the database's clock): what
    leases/postgres.py does in SQL, for driving supervisors of several "hosts" without one."""

    def __init__(self, world: FakeWorld) -> None:
        self.world = world
        self.leases: dict[str, dict[str, Any]] = {}  # name -> holder, generation, expires
        self.slots: dict[str, tuple[float, int]] = {}  # name -> last start, generation
        self.beats: dict[tuple[str, str], float] = {}
        self.turns: dict[str, str] = {}
        self.reachable = True
        self.fail_next: set[str] = set()  # requests ("claim_slot", ...) that fail once, as on a dropped connection
        self.calls: list[tuple[str, str]] = []  # (host, what)

    def host(self, name: str, lease: float) -> "FakeCluster":
        return FakeCluster(self, name, lease)

    def link(self, host: str) -> "FakeLink":
        """One connection of HOST's for the engines of many jobs (the cluster house's SharedLink)."""
        return FakeLink(self, host)

    def ask(self, host: str, what: str) -> float:
        self.calls.append((host, what))
        if what in self.fail_next:
            self.fail_next.discard(what)
            raise LeaseUnavailable("cluster database postgresql://u@db/ws: server closed the connection")
        if not self.reachable:
            raise LeaseUnavailable("cannot reach cluster database postgresql://u@db/ws: timeout expired")
        return self.world.now


class FakeLink:
    """SharedLink over a FakeDatabase: what postgres.PostgresLink does, renew_all's one statement
    included; `rounds` lists the names each renew_all asked for."""

    def __init__(self, db: FakeDatabase, host: str) -> None:
        self.db, self.host = db, host
        self.rounds: list[list[str]] = []
        self.drops = 0

    def lease_for(self, timing: Any) -> "FakeCluster":
        return FakeCluster(self.db, self.host, timing.lease, link=self)

    def renew_all(self, asks: list[tuple[Grant, float]], attempt: float) -> dict[str, Grant]:
        self.rounds.append([grant.name for grant, _ in asks])
        now = self.db.ask(self.host, "renew_all")
        renewed: dict[str, Grant] = {}
        for grant, ttl in asks:
            self.db.beats[(grant.name, self.host)] = now
            row = self.db.leases.get(grant.name)
            mine = row is not None and (row["holder"], row["generation"]) == (grant.holder, grant.token)
            if row is None or not mine or row["expires"] <= now:
                continue
            row["expires"] = now + ttl
            renewed[grant.name] = Grant(grant.name, grant.holder, grant.token, str(row["expires"]))
        return renewed

    def drop(self) -> None:
        self.drops += 1


class FakeCluster:
    """ClusterLease for one host over a FakeDatabase; `link`: its connection (shared by the
    engines `FakeLink.lease_for` gives, else its own)."""

    def __init__(self, db: FakeDatabase, host: str, lease: float, link: Optional[FakeLink] = None) -> None:
        self.db, self.host, self.lease = db, host, lease
        self.holder = f"{host}:boot:1:1"
        self.seen_holder = ""
        self.link = link or FakeLink(db, host)

    def _ask(self, what: str) -> float:
        return self.db.ask(self.host, what)

    def _beat(self, name: str, now: float) -> None:
        self.db.beats[(name, self.host)] = now

    def acquire(self, name: str) -> Optional[Grant]:
        now = self._ask("acquire")
        self._beat(name, now)
        row = self.db.leases.get(name)
        if row is not None and row["expires"] > now:
            self.seen_holder = row["holder"].split(":", 1)[0]
            return None
        generation = row["generation"] + 1 if row else 1
        self.db.leases[name] = {"holder": self.holder, "generation": generation, "expires": now + self.lease}
        return Grant(name, self.holder, generation, str(now + self.lease))

    def renew(self, grant: Grant) -> Optional[Grant]:
        now = self._ask("renew")
        self._beat(grant.name, now)
        row = self.db.leases.get(grant.name)
        if row is None or row["holder"] != grant.holder or row["generation"] != grant.token or row["expires"] <= now:
            return None
        row["expires"] = now + self.lease
        return Grant(grant.name, grant.holder, grant.token, str(row["expires"]))

    def release(self, grant: Grant) -> bool:
        now = self._ask("release")
        row = self.db.leases.get(grant.name)
        if row is None or row["generation"] != grant.token or row["expires"] <= now:
            return False
        row["expires"] = now
        return True

    def check(self, name: str, token: int) -> bool:
        now = self._ask("check")
        row = self.db.leases.get(name)
        return row is not None and row["generation"] == token and row["expires"] > now

    def status(self, name: str) -> None:
        return None

    def overview(self, name: str, fresh: float) -> None:
        return None

    def claim_slot(self, name: str, period: float) -> Optional[int]:
        now = self._ask("claim_slot")
        last = self.db.slots.get(name)
        if last is not None and last[0] > now - period:
            return None
        generation = last[1] + 1 if last else 1
        self.db.slots[name] = (now, generation)
        return generation

    def heartbeat(self, name: str) -> None:
        self._beat(name, self._ask("heartbeat"))

    def _live(self, name: str, fresh: float, now: float) -> list[str]:
        return sorted(h for (n, h), seen in self.db.beats.items() if n == name and seen > now - fresh)

    def whose_turn(self, name: str, fresh: float) -> Optional[str]:
        now = self._ask("whose_turn")
        live = self._live(name, fresh, now)
        turn = self.db.turns.get(name)
        if turn in live:
            return turn
        after = [h for h in live if turn is not None and h > turn]
        return after[0] if after else live[0] if live else None

    def pass_turn(self, name: str, fresh: float) -> str:
        now = self._ask("pass_turn")
        live = self._live(name, fresh, now)
        after = [h for h in live if h > self.host]
        self.db.turns[name] = after[0] if after else live[0] if live else self.host
        return self.db.turns[name]

    def close(self) -> None:
        pass


# The supervisor of one job in this world, and what the tests read of it.
T0 = 1000.0  # FakeWorld starts its clock here


class FakeLock:
    """A lock that is always ours; it counts the lock watch's looks and remembers its release."""

    def __init__(self, path: str = "/nonexistent/fake.lock") -> None:
        self.path = path
        self.released = False
        self.looks = 0

    def try_acquire(self) -> bool:
        return True

    def inheritable_fds(self) -> tuple[int, ...]:
        return ()

    def still_ours(self) -> bool:
        self.looks += 1
        return True

    def repair(self) -> str:
        return "repaired"

    def refresh(self, older_than: float = 0.0) -> None:
        pass

    def release(self) -> None:
        self.released = True


def supervisor(tmp_path: Any, world: FakeWorld, store: Optional[StateStore] = None,
               ready: Optional[list[Optional[str]]] = None, **options: Any) -> Supervisor:
    logs = os.path.join(str(tmp_path), "logs")
    job = Job(name="j", command=["/bin/daemon"], workdir="/", lock_dir=os.path.join(str(tmp_path), "locks"),
              stdout_log=os.path.join(logs, "j.out"), stderr_log=os.path.join(logs, "j.err"), **options)
    return Supervisor(job, FakeLock(), store or StateStore(os.path.join(str(tmp_path), "state")),
                      seams=world.seams(), ready=ready.append if ready is not None else None)


def births(world: FakeWorld) -> list[float]:
    return [round(p.born - T0, 3) for p in world.spawned]


def log_of(sup: Supervisor) -> str:
    with open(sup.job.stderr_log) as f:
        return f.read()


def exit_after(world: FakeWorld, seconds: float, code: int) -> None:
    def on_spawn(proc: FakeProc) -> None:
        world.after(seconds, lambda: world.exit(proc.pid, code))
    world.on_spawn = on_spawn
