"""What the farm touches of the world, in one object that tests replace (tests/kits/fakefarm.py), as
the supervisor's `Seams` are: the clocks, the nursery that starts the tasks, starting the watcher,
reaping, listing and signalling processes, waiting, and whether a slot's tree is stopped in a
thread of its own (real farms: other slots keep running meanwhile) or at once (the fake world,
whose clock the stop's grace moves)."""

from __future__ import annotations

import os
import time
from typing import Any, Callable, Optional, Protocol

from ..proc import procs
from ..proc.children import wait_child
from ..proc.spawn import Spawned, spawn
from .nursery import Client, boottime


class Nursery(Protocol):
    """What the farm asks of the process that starts its tasks (nursery.Client; the fake world's)."""
    namespaces: bool
    gone: bool

    def launch(self) -> None: ...
    def start(self, env: dict[str, str]) -> str: ...
    def spawn(self, seq: int, argv: list[str], env: dict[str, str], cwd: str, log: int) -> None: ...
    def events(self) -> list[tuple[Any, ...]]: ...
    def wait_started(self, seq: int) -> Optional[tuple[Any, ...]]: ...
    def outer(self, pid: int) -> Optional[int]: ...
    def renew(self, deadline: float) -> None: ...
    def exited(self, pid: int, code: int) -> bool: ...
    def fileno(self) -> int: ...
    def close(self) -> None: ...


class Seams:
    def __init__(self, clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time,
                 lease_clock: Callable[[], float] = boottime,
                 nursery: Callable[[str, bool], Nursery] = Client,
                 spawn: Callable[..., Spawned] = spawn,
                 wait_child: Callable[[int, float], Optional[int]] = wait_child,
                 reap: Callable[[], list[tuple[int, int]]] = procs.reap_exited,
                 scan: Callable[[], dict[int, procs.Proc]] = procs.scan,
                 send: Callable[[int, int], None] = os.kill, sleep: Callable[[float], None] = time.sleep,
                 wait: Optional[Callable[[float], None]] = None, threads: bool = True) -> None:
        self.clock = clock
        self.wall = wall
        self.lease_clock = lease_clock  # CLOCK_BOOTTIME: the give-up deadline's clock, the nursery's too
        self.nursery = nursery  # (marker, namespaces): the process that starts the tasks
        self.spawn = spawn  # the watcher (reaper.py), where there is no PID namespace
        self.wait_child = wait_child  # (pid, timeout): the watcher's exit at the end
        self.reap = reap
        self.scan = scan
        self.send = send
        self.sleep = sleep
        self.wait = wait  # None: select on the wake-up pipe and the nursery's socket
        self.threads = threads  # False: a slot's tree is stopped at once, in the loop
