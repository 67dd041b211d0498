"""The fake world for the farm: the supervisor's fake world (fakeworld.py: simulated clock, fake
processes, scripted events) with a fake nursery that starts tasks as fake processes and reports
their ends, so the farm's real loop (farm/workers.py) runs claim, timeouts, stops and leases in
simulated time, on a real SQLite store, without root, namespaces or sleeps.

    world = FarmWorld()
    world.on_spawn = lambda task: world.after(5, lambda: world.exit(task.pid, 0))
    farm = world.farm(tmp_path, ["a", "b"], workers=2)
    assert farm.run() == 0
"""

from __future__ import annotations

import os
from typing import Any, Optional

from fakeworld import SUPERVISOR, FakeProc, FakeWorld

from watchdog_singleton.envvars import TOKEN_ENV
from watchdog_singleton.farm.nursery import SpawnFailed
from watchdog_singleton.farm.runner import Runner
from watchdog_singleton.farm.seams import Seams
from watchdog_singleton.farm.store import Store
from watchdog_singleton.farm.store.sqlite import SqliteStore
from watchdog_singleton.farm.workers import Farm, Options

FARM = SUPERVISOR  # the farm is the fake world's subreaper: orphans come to it
MARKER = "/tmp/ws-fake/farm-0123.lock#"


class FarmWorld(FakeWorld):
    def __init__(self) -> None:
        super().__init__()
        self.codes: dict[int, int] = {}  # pid -> exit code, for the nursery's reports
        self.nursery: Optional[FakeNursery] = None
        self.store: Optional[Store] = None
        self.limit = self.now + 3600.0
        self.looks = 0

    def clock(self) -> float:
        self.looks += 1
        if self.looks > 200_000:  # a loop that spins without waiting fails too
            raise AssertionError(f"the farm looked at the clock {self.looks} times by {self.now:g} s")
        return self.now

    def wait(self, timeout: float) -> None:
        super().wait(timeout)
        if self.now > self.limit:  # a farm that would never end fails its test instead of hanging it
            raise AssertionError(f"the farm still runs at {self.now:g} s of simulated time")

    def exit(self, pid: int, code: int) -> None:
        if pid in self.procs:
            self.codes[pid] = code
        super().exit(pid, code)

    def tasks(self, token_prefix: str = MARKER) -> list[FakeProc]:
        """The live processes of the farm's tasks (by their marker)."""
        return [p for p in self.procs.values() if p.token is not None and p.token.startswith(token_prefix)]

    def farm_seams(self) -> Seams:
        def nursery(marker: str, namespaces: bool) -> FakeNursery:
            self.nursery = FakeNursery(self, marker, namespaces)
            return self.nursery
        return Seams(clock=self.clock, wall=lambda: self.now + self.wall_offset, lease_clock=lambda: self.now,
                     nursery=nursery, reap=self.reap, scan=self.scan, send=self.send, sleep=self.sleep,
                     wait=self.wait, threads=False)

    def farm(self, folder: Any, commands: list[str], **options: Any) -> Farm:
        """A farm of `commands` in `folder` (its list, work folder, logs and SQLite store)."""
        from watchdog_singleton.farm import tasklist

        listing = os.path.join(str(folder), "tasks.txt")
        with open(listing, "w") as f:
            f.write("".join(f"{c}\n" for c in commands))
        workdir = os.path.join(str(folder), "tasks.txt.farm")
        os.makedirs(os.path.join(workdir, "logs"), mode=0o700, exist_ok=True)
        store = self.store = SqliteStore(os.path.join(workdir, "farm.sqlite"), clock=lambda: self.now,
                                         wall=lambda: self.now + self.wall_offset)
        store.add(tasklist.read(listing, at_start=True))
        o = Options(tasklist=listing, workdir=workdir, cwd=str(folder), **{"progress_every": 3600.0, **options})
        return Farm(o, store, Runner(), MARKER, echo=lambda _: None, warn=self.warnings.append,
                    seams=self.farm_seams(), tty=False)

    @property
    def warnings(self) -> list[str]:
        if not hasattr(self, "_warnings"):
            self._warnings: list[str] = []
        return self._warnings


class FakeNursery:
    """nursery.Client over the fake world: a spawn is a fake process (the task's first process,
    carrying the task's marker), reported started at once and ended when it exits."""

    def __init__(self, world: FarmWorld, marker: str, namespaces: bool) -> None:
        self.world, self.marker, self.namespaces = world, marker, namespaces
        self.gone = False
        self.env: dict[str, str] = {}
        self.queue: list[tuple[Any, ...]] = []
        self.running: dict[int, int] = {}  # pid -> seq
        self.deadlines: list[float] = []  # the renew deadlines the farm sent
        self.closed = False

    def launch(self) -> None:
        pass

    def start(self, env: dict[str, str]) -> str:
        self.env = dict(env)
        return "ns"

    def spawn(self, seq: int, argv: list[str], env: dict[str, str], cwd: str, log: int) -> None:
        if self.gone:
            raise SpawnFailed(126, "the farm's nursery process is gone")
        full = {**self.env, **env}
        world = self.world
        task = FakeProc(next(world.next_pid), FARM, full[TOKEN_ENV], argv, world.now)
        world.procs[task.pid] = task
        world.spawned.append(task)
        world.envs.append(full)
        self.running[task.pid] = seq
        self.queue.append(("started", seq, task.pid))
        world.on_spawn(task)

    def _collect(self) -> None:
        for pid, seq in sorted(self.running.items()):
            if pid not in self.world.procs:
                del self.running[pid]
                self.queue.append(("exit", seq, self.world.codes[pid]))

    def events(self) -> list[tuple[Any, ...]]:
        self._collect()
        got, self.queue = self.queue, []
        return got

    def wait_started(self, seq: int) -> Optional[tuple[Any, ...]]:
        for i, message in enumerate(self.queue):
            if message[0] in ("started", "failed") and message[1] == seq:
                return self.queue.pop(i)
        return None

    def outer(self, pid: int) -> Optional[int]:
        return pid

    def renew(self, deadline: float) -> None:
        self.deadlines.append(deadline)

    def exited(self, pid: int, code: int) -> bool:
        return False

    def fileno(self) -> int:
        raise AssertionError("the fake world waits through its seams")

    def close(self) -> None:
        self.closed = True
