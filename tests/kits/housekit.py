"""The shared resident (house.py) in the fake world: jobs handed over with a fake lock, each job's
daemons scripted by name, and what the tests read of them. Every time is simulated."""

from __future__ import annotations

import os
from typing import Any, Callable

from fakeworld import T0, FakeLock, FakeProc, FakeWorld

from watchdog_singleton.job.model import Job
from watchdog_singleton.state.store import StateStore
from watchdog_singleton.supervisor.house import SIGTERM, House


class HouseSetup:
    def __init__(self, tmp_path: Any) -> None:
        self.dir = str(tmp_path)
        self.world = FakeWorld()
        self.store = StateStore(os.path.join(self.dir, "state"))
        self.house = House(self.store, seams=self.world.seams(), socket_path="/fake/.house.sock")
        self.house.open()
        self.jobs: dict[str, Job] = {}
        self.locks: dict[str, FakeLock] = {}
        self.behaviour: dict[str, Callable[[FakeProc], None]] = {}  # what each job's daemon does once spawned
        self.world.on_spawn = self._on_spawn

    def job(self, name: str, **options: Any) -> Job:
        logs = os.path.join(self.dir, "logs")
        job = Job(name=name, command=["/bin/daemon", name], workdir="/", lock_dir=os.path.join(self.dir, "locks"),
                  stdout_log=os.path.join(logs, f"{name}.out"), stderr_log=os.path.join(logs, f"{name}.err"),
                  **options)
        self.jobs[name] = job
        return job

    def take(self, job: Job) -> None:
        self.locks[job.name] = FakeLock(job.lock_path)
        self.house.take(job, self.locks[job.name])

    def _on_spawn(self, proc: FakeProc) -> None:
        for name, job in self.jobs.items():
            if proc.token == job.lock_path and name in self.behaviour:
                self.behaviour[name](proc)

    def births(self, name: str) -> list[float]:
        token = self.jobs[name].lock_path
        return [round(p.born - T0, 3) for p in self.world.spawned if p.token == token]

    def live(self, name: str) -> list[int]:
        return self.world.live(self.jobs[name].lock_path)

    def log(self, name: str) -> str:
        with open(self.jobs[name].stderr_log) as f:
            return f.read()

    def stop_all_at(self, when: float) -> None:
        self.world.at(when, lambda: self.house.wakeups.signals.append(SIGTERM))
