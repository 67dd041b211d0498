"""One attempt of a task in a worker slot: start it (its log, its environment, the nursery's
spawn) and record how it ended (the store, the timeline, its temporary folder).

    attempts = Attempts(options, store, runner, nursery, timeline, marker, host, holder, broken)
    attempts.start(slot, claim)   # slot.seq/slot.code say whether the nursery took it
    attempts.record(slot)         # once slot.code is set and its tree is gone; the slot is free again

The farm's loop (workers.py) decides when; this module does the bookkeeping of one attempt.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from typing import TYPE_CHECKING, Callable, Optional

from ..envvars import ATTEMPT_ENV, GENERATION_ENV, PROC_NUMBER_ENV, SLOT_ENV, TASK_ENV, TOKEN_ENV
from ..errors import UserError
from . import place
from .nursery import SpawnFailed
from .runner import Runner
from .store import Claim, Guarded
from .trace import Timeline

if TYPE_CHECKING:
    from .seams import Nursery
    from .workers import Options


class Slot:
    """One worker slot's current attempt."""

    def __init__(self, number: int) -> None:
        self.number = number
        self.claim: Optional[Claim] = None
        self.token = ""
        self.started = 0.0
        self.deadline = 0.0
        self.code: Optional[int] = None
        self.stopper: Optional[threading.Thread] = None
        self.outcome = ""  # set when we stop it: "timeout", "requeued" or "lapsed" (its lease lost)
        self.tmpdir: Optional[str] = None
        self.seq = 0  # the nursery's name for this attempt
        self.pid = 0  # its first process, as the nursery sees it


class Attempts:
    def __init__(self, options: Options, store: Guarded, runner: Runner, nursery: Nursery, timeline: Timeline,
                 marker: str, host: str, holder: str, broken: Callable[[str], None],
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time) -> None:
        self.o = options
        self.store = store
        self.runner = runner
        self.nursery = nursery
        self.timeline = timeline
        self.marker = marker
        self.host = host
        self.holder = holder
        self.broken = broken
        self.clock = clock
        self.wall = wall
        self.logs = os.path.join(options.workdir, "logs")
        self.by_seq: dict[int, Slot] = {}  # asked of the nursery, not yet ended
        self.last_seq = 0

    def start(self, slot: Slot, claim: Claim) -> None:
        slot.claim = claim
        slot.code = None
        slot.outcome = ""
        slot.stopper = None
        slot.token = f"{self.marker}{claim.id}#{claim.gen}"
        slot.started = self.wall()
        slot.deadline = self.clock() + self.o.task_timeout if self.o.task_timeout else 0.0
        env = {}  # what differs from the farm's environment, which the nursery has had since it started
        env[TOKEN_ENV] = slot.token
        env[TASK_ENV] = claim.id
        env[SLOT_ENV] = env[PROC_NUMBER_ENV] = str(slot.number)  # PyTaskFarmer has the task index there
        env[ATTEMPT_ENV] = str(claim.attempt)
        env[GENERATION_ENV] = str(claim.gen)
        cwd = self.o.cwd
        path = os.path.join(self.logs, f"{claim.id}.log")
        try:
            log = place.open_private(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, "log file")
            try:
                os.write(log, f"# farm: attempt {claim.attempt} of {claim.id} on {self.host} slot {slot.number}: "
                              f"{claim.command}\n".encode(errors="surrogateescape"))
                if self.runner.tmpdir:
                    slot.tmpdir = cwd = tempfile.mkdtemp(prefix=f"farm-{claim.id}-")
            except OSError:
                os.close(log)
                raise
        except (OSError, UserError) as exc:  # a full disk, a read-only folder: the task never started
            self.store.release(claim)
            slot.claim = None
            self.broken(f"cannot write {path}: {exc.strerror if isinstance(exc, OSError) else exc}")
            return
        try:
            self.last_seq += 1
            slot.seq = self.last_seq
            self.by_seq[slot.seq] = slot
            slot.pid = 0  # until the nursery says it started (Farm._reap)
            self.nursery.spawn(slot.seq, self.runner.argv(claim.command), env, cwd, log)
        except SpawnFailed as exc:
            try:
                os.write(log, f"# farm: cannot start it: {exc}\n".encode(errors="surrogateescape"))
            except OSError:
                pass
            self.by_seq.pop(slot.seq, None)
            slot.pid = 0
            slot.code = exc.code
        finally:
            os.close(log)

    def record(self, slot: Slot) -> None:
        claim, code = slot.claim, slot.code
        assert claim is not None and code is not None
        # "lost": the claim was no longer ours. A result kept during an outage (store.Guarded) is
        # recorded later, or lost then: the timeline says how the attempt ended.
        if code == 0:  # finished, whenever it ended: during a stop, a timeout or a lost lease too
            outcome = "finished" if self.store.finish(claim, code) or self.store.kept(claim) else "lost"
        elif slot.outcome in ("requeued", "lapsed"):  # cut short: back to todo, not a failure
            outcome = "requeued" if self.store.release(claim) or self.store.kept(claim) else "lost"
        else:
            state = self.store.fail(claim, code, self.o.retries)
            outcome = "lost" if not state and not self.store.kept(claim) else (slot.outcome or "failed")
        self.timeline.attempt(task=claim.id, attempt=claim.attempt, command=claim.command, node=self.host,
                              farm=self.holder, slot=slot.number, start=slot.started, end=self.wall(),
                              outcome=outcome, code=code)
        if slot.tmpdir:
            shutil.rmtree(slot.tmpdir, ignore_errors=True)
        slot.claim = slot.stopper = slot.tmpdir = None
        slot.code = None
        slot.deadline = 0.0
        slot.pid = slot.seq = 0
        slot.outcome = ""
