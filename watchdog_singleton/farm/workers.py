"""The farm's loop: claim tasks into free worker slots, run each in a session of its own,
renew the leases, record how each attempt ended, and stop cleanly on a signal or --timeout.

    farm = Farm(options, store, Runner(), marker="/tmp/ws-1000/farm-ab12.lock#", echo=print)
    code = farm.run()   # 0 all finished, 1 some failed, 75 stopped with work left (requeue me),
                        # 74 its database or files failed it (stopped as on SIGUSR1)

One process, no worker processes: each slot is one running task's process tree, marked with
the farm's marker plus the task's id in its environment (the token tree.py follows), so the
tree is found after setsid and double forks. Tasks are started by the nursery (nursery.py): a
PID namespace where the host allows it, so nothing of a task outlives the farm however it dies.
A slot's tree is stopped (tree.Stopper, in a thread so other slots keep running) on
--task-timeout and on a farm stop; a finished task's leftovers are stopped when the farm ends.

Leases: each heartbeat that renewed every lease the farm holds moves the give-up deadline
(CLOCK_BOOTTIME, from when it was sent) to `lease - margin` later; the farm and the nursery
each stop every task at that deadline (SIGKILL, at once), so a farm that could not renew, or was
paused, has nothing running when another farm may take its tasks. A heartbeat that renewed fewer
rows than the farm holds means some were taken: those tasks are stopped at once too.

A database that does not answer for a moment (transient: refused, dropped, timed out; PostgreSQL)
is an outage (outage.py), not a stop: no claims, the tasks run on until the give-up deadline, the
results wait in store.Guarded, and a heartbeat every few seconds probes; the first that goes
through records what waited and the farm goes on. Past the bound (the lease) it stops, exit 74.

The loop decides when; attempt.py starts and records one attempt of a slot, lease.py keeps
the give-up deadline and says which slots a heartbeat found taken. It runs on the child-process
loop the resident supervisor runs on (proc/children.py: the wake-up pipe, signals acted on at the
loop's top, reaping), and touches the world only through its `Seams` (seams.py: clocks, the
nursery, spawn, reap, scan, signals, waiting), which tests/kits/fakefarm.py replaces.
"""

from __future__ import annotations

import os
import select
import signal
import threading
from typing import Any, Callable, NamedTuple, Optional

from ..envvars import FARM_ENV, NAMESPACE_ENV
from ..errors import REQUEUE, SOME_FAILED, STORAGE_FAILED
from ..proc import procs
from ..proc.children import Wakeups
from ..proc.stop import stop_job
from ..proc.tree import Stopper
from . import tasklist as tasklist_mod
from .attempt import Attempts, Slot
from .lease import Leases
from .nursery import helper_argv
from .outage import Outage, retry_every
from .progress import Progress
from .reaper import ALL_CLEAR
from .runner import Runner
from .seams import Seams
from .store import Guarded, Store, StoreError
from .trace import FILE_NAME as TIMELINE_NAME
from .trace import Timeline

__all__ = ["Farm", "Options", "Slot"]

IDLE_POLL = 1.0  # with nothing to claim, how often to look again (tasks added, other farms' leases)
RELIST_EVERY = 2.0  # how often to look whether the task list file changed


class Options(NamedTuple):
    tasklist: str
    workdir: str
    workers: int = 4
    timeout: float = 0.0  # the whole farm; 0: none
    task_timeout: float = 0.0  # one attempt; 0: none
    retries: int = 0
    lease: float = 60.0
    grace: float = 10.0
    progress_every: float = 10.0
    cwd: str = "."  # where tasks run (the folder the farm was started in)


class Farm:
    def __init__(self, options: Options, store: Store, runner: Runner, marker: str,
                 echo: Callable[[str], None], warn: Callable[[str], None], seams: Optional[Seams] = None,
                 tty: Optional[bool] = None) -> None:
        self.o = options
        seams = self.seams = seams or Seams()
        clock, wall = seams.clock, seams.wall
        self.failure = ""  # the first failure of the farm's database or files: it stops, exit 74
        self.outage = Outage(bound=options.lease, retry_every=retry_every(options.lease))
        self.store = Guarded(store, self._broken, on_outage=self._outage_began,
                             on_back=lambda recorded: self.warn(self.outage.end(self.clock(), recorded)))
        self.runner = runner
        self.echo = echo
        self.warn = warn
        self.clock = clock
        self.wall = wall
        self.host = os.uname().nodename
        self.nonce = os.urandom(4).hex()  # not secrets: its hmac would load OpenSSL
        # host/lock/pid/nonce: the host lock of this work folder proves the other farms under
        # host/lock/ dead; farms of other folders (sharing a PostgreSQL list) are not touched.
        self.farm_prefix = f"{self.host}/{os.path.basename(marker.rstrip('#'))}/"
        self.holder = f"{self.farm_prefix}{os.getpid()}/{self.nonce}"
        self.host_marker = marker  # every farm of this work folder on this host
        self.marker = f"{marker}{self.nonce}#"  # this farm
        self.slots = [Slot(i) for i in range(options.workers)]
        self.stop_reason = ""
        self.timeline = Timeline(os.path.join(options.workdir, TIMELINE_NAME), on_error=self._broken)
        self.progress = Progress(warn, tty=tty, every=options.progress_every, clock=clock)
        env = procs.clean_environ(dict(os.environ))
        env[FARM_ENV] = options.workdir
        self.env = env
        self.wakeups = Wakeups((signal.SIGUSR1, signal.SIGTERM, signal.SIGINT, signal.SIGHUP))
        self.stopper = Stopper(send=seams.send, clock=clock, sleep=seams.sleep)
        self.reaper = 0  # the watcher's pid, where there is no PID namespace
        self.reaper_code: Optional[int] = None
        self.reaper_w: Optional[int] = None
        self.list = tasklist_mod.Watch(options.tasklist)
        self.nursery = seams.nursery(self.marker, os.environ.get(NAMESPACE_ENV, "1") != "0")
        self.attempts = Attempts(options, self.store, runner, self.nursery, self.timeline, self.marker,
                                 self.host, self.holder, self._broken, clock=clock, wall=wall)
        self.by_seq = self.attempts.by_seq  # the same dict: _reap and _stop_slot follow the nursery's events
        self.leases = Leases(options.lease, tell=self.nursery.renew, clock=seams.lease_clock)

    # -- the lifecycle ------------------------------------------------------------------
    def run(self) -> int:
        self.nursery.launch()  # it boots while we sweep (no task starts before both are done)
        # Our host lock is held: any farm of this folder on this host that left tasks is dead.
        stop_job(self.host_marker, self.o.grace, prefix=True, scan=self.seams.scan, stopper=self.stopper)
        back = self.store.sweep(dead_holder_prefix=self.farm_prefix, alive=self.holder)
        if back:
            self.warn(f"farm: {len(back)} task(s) of a farm that died went back to todo")
        if self.nursery.start(self.env) != "ns":
            # No PID namespace: the watcher stops what the tasks forked if the farm is killed.
            if self.nursery.namespaces:
                self.warn("farm: no PID namespace on this host: a killed farm's tasks are stopped by its watcher, "
                          "which cannot find processes that cleared their environment")
            self._start_reaper()
        self.wakeups.open()
        try:
            return self._loop()
        finally:
            self.wakeups.restore()  # the signals are the default's again while the rest is stopped
            left = stop_job(self.marker, self.o.grace, prefix=True, scan=self.seams.scan,
                            stopper=self.stopper).left  # what finished tasks left running
            self.nursery.close()  # in a namespace: what hid from the marker goes with it
            if self.reaper_w is not None:
                if not left:  # nothing marked is left to fork more: the watcher need not scan again
                    try:
                        os.write(self.reaper_w, ALL_CLEAR)
                    except OSError:
                        pass
                os.close(self.reaper_w)  # the reaper exits
            if self.reaper and self.reaper_code is None:
                self.seams.wait_child(self.reaper, 5)
            self.timeline.close()
            self.wakeups.close()

    def _loop(self) -> int:
        began = self.clock()
        beat_every = max(0.05, self.o.lease / 3)
        next_beat = began + beat_every
        next_relist = began + RELIST_EVERY
        next_progress = began
        idle_until = 0.0
        self.list.start()
        self.leases.renewed(self.seams.lease_clock())
        while True:
            self.wakeups.drain()
            self._take_signals()
            if self.leases.overdue(self.seams.lease_clock()):  # before anything else
                self._lapse(self.slots, "the farm could not renew its leases in time")
            self._reap()
            if self._finish_slots():
                idle_until = 0.0  # a slot is free: claim now, or see that the list is done
            now = self.clock()
            if not self.stop_reason and self.o.timeout and now - began >= self.o.timeout:
                self.stop_reason = f"--timeout {self.o.timeout:g} s reached"
            if self.outage.past_bound(now) and not self.failure:
                self._broken(self.outage.failure(now))
            if self.stop_reason:
                self._stop_all("requeued")
            if now >= next_beat or self.outage.due(now):  # in an outage the heartbeat is the probe
                next_beat = now + beat_every
                self.outage.probed(now)
                self._heartbeat()
                take_back(self.store, self.warn)
            if self.o.task_timeout:
                for slot in self.slots:
                    if slot.pid and slot.code is None and slot.stopper is None and now >= slot.deadline:
                        self._stop_slot(slot, "timeout")
            if not self.stop_reason and now >= next_relist and not self.store.down:
                next_relist = now + RELIST_EVERY
                self._relist()
            free = [s for s in self.slots if s.claim is None]
            busy = len(self.slots) - len(free)
            if self.stop_reason:
                if busy == 0:
                    return self._stopped()
            elif free and now >= idle_until and not self.store.down:  # an outage claims nothing
                claims = self.store.claim(self.holder, self.o.lease, len(free))
                for slot, claim in zip(free, claims):
                    self.attempts.start(slot, claim)
                if not claims:
                    idle_until = now + IDLE_POLL
                    if busy == 0 and not self.store.down:
                        counts = self.store.stats()  # the last counts seen, if the database is down now
                        if counts["todo"] == 0 and counts["running"] == 0 and not self.store.down:
                            self.progress.close(counts)
                            return SOME_FAILED if counts["failed"] else 0
            if now >= next_progress:
                next_progress = now + (0.25 if self.progress.tty else self.o.progress_every)
                self.progress.update(self.store.stats(), force=True)
            deadlines = [s.deadline for s in self.slots if s.deadline and s.stopper is None]
            self._wait(min(next_beat, next_progress, *deadlines, idle_until if idle_until > now else next_beat,
                           now + self.leases.give_up_at - self.seams.lease_clock(), self.outage.next_probe,
                           self.outage.deadline() + 0.001) - self.clock())

    def _stopped(self) -> int:
        """The farm stopped and nothing runs any more: record what is left to, say so, and its exit code."""
        unrecorded = self.store.settle()
        counts = self.store.stats()  # during an outage: the last counts seen
        self.progress.close(counts)
        left = counts['todo'] + counts['running']
        lost = f" ({unrecorded} whose end could not be recorded: they run again)" if unrecorded else ""
        if self.failure:
            self.warn(f"farm: stopped: {self.failure}; {left} task(s) left{lost}: fix that and "
                      f"run the farm again (exit {STORAGE_FAILED})")
            return STORAGE_FAILED
        if self.store.down:  # a stop (signal, --timeout) during an outage: the next farm may find it over
            self.warn(self.outage.stopped_line(self.stop_reason, lost, REQUEUE))
            return REQUEUE
        if left == 0:  # what was running finished meanwhile
            self.warn(f"farm: stopped ({self.stop_reason}) with nothing left to do")
            return SOME_FAILED if counts["failed"] else 0
        self.warn(f"farm: stopped ({self.stop_reason}); {left} "
                  f"task(s) left: run the farm again to continue (exit {REQUEUE})")
        return REQUEUE

    # -- leases -------------------------------------------------------------------------
    def _heartbeat(self) -> None:
        beat = self.leases.heartbeat(self.store, self.holder, self.slots, check=self.store.down)
        if beat is None:
            return
        if beat.taken:
            self._lapse(beat.taken, "another farm took over the lease")
        self.leases.renewed(beat.sent)

    def _lapse(self, slots: list[Slot], why: str) -> None:
        lapsed = [s for s in slots if s.claim is not None and s.outcome != "lapsed"]
        for slot in lapsed:
            self._stop_slot(slot, "lapsed", grace=0.0)
        if lapsed:
            self.warn(f"farm: {why}: {len(lapsed)} task(s) stopped at once, to run again")

    # -- one attempt --------------------------------------------------------------------
    def _reap(self) -> None:
        for event in self.nursery.events():
            if event[0] == "lapsed":  # the nursery's deadline came first: it killed every task
                self._lapse(self.slots, "the farm could not renew its leases in time")
            else:
                self._spawned(event)
        if self.nursery.gone and self.by_seq:
            if not self.stop_reason:
                self.stop_reason = "the farm's nursery process died"
            self._lapse(self.slots, "the farm's nursery process died")
            for slot in self.by_seq.values():
                slot.code = -signal.SIGKILL
            self.by_seq.clear()
        for pid, code in self.seams.reap():
            if self.reaper and pid == self.reaper:
                self.reaper_code = code
                self.warn("farm: the watcher process died: a SIGKILL of this farm would leave tasks running")
            else:
                self.nursery.exited(pid, code)

    def _spawned(self, event: tuple[Any, ...]) -> None:
        """A task started (its pid), could not start (its code) or ended (its code)."""
        if event[0] == "started":
            slot = self.by_seq.get(event[1])
            if slot is not None:
                slot.pid = int(event[2])
        elif event[0] in ("failed", "exit"):
            slot = self.by_seq.pop(event[1], None)
            if slot is not None:
                slot.code = int(event[2])

    def _finish_slots(self) -> int:
        """Record the attempts that ended; how many."""
        ended = 0
        for slot in self.slots:
            if slot.claim is None or slot.code is None:
                continue
            if slot.stopper is not None and slot.stopper.is_alive():
                continue  # its tree may still hold processes: the task is not over until it is gone
            self.attempts.record(slot)
            ended += 1
        return ended

    # -- stopping -----------------------------------------------------------------------
    def _stop_slot(self, slot: Slot, outcome: str, grace: Optional[float] = None) -> None:
        slot.outcome = outcome
        if not slot.pid and self.by_seq.get(slot.seq) is slot:  # asked for, not yet started: wait for it
            answer = self.nursery.wait_started(slot.seq)
            if answer is not None:
                self._spawned(answer)
        root = self.nursery.outer(slot.pid) if slot.pid else None
        wait = self.o.grace if grace is None else grace

        def stop() -> None:
            stop_job(slot.token, wait, roots=lambda: (root,) if root else (), scan=self.seams.scan,
                     stopper=self.stopper)
            self.wakeups.wake()
        slot.stopper = threading.Thread(target=stop, name=f"stop-{slot.number}", daemon=True)
        if self.seams.threads:
            slot.stopper.start()
        else:
            slot.stopper.run()  # at once; a thread never started is not alive

    def _stop_all(self, outcome: str) -> None:
        for slot in self.slots:
            if slot.claim is not None and slot.stopper is None:
                self._stop_slot(slot, outcome)

    def _broken(self, message: str) -> None:
        """The farm's database or files failed it (locked, full, read-only, gone): stop as on
        SIGUSR1, recording what can still be recorded, and exit STORAGE_FAILED with `message`."""
        if not self.failure:
            self.failure = message
            self.stop_reason = self.stop_reason or message

    def _outage_began(self, error: StoreError) -> None:
        """The database does not answer for now (store.Guarded is `down`): say so, once."""
        self.outage.begin(error, self.clock())
        wall = self.wall()
        running = sum(1 for s in self.slots if s.claim is not None)
        self.warn(self.outage.began_line(running, wall + self.leases.give_up_at - self.seams.lease_clock(),
                                         wall + self.outage.bound))

    def _take_signals(self) -> None:
        for sig in self.wakeups.take():
            if not self.stop_reason:
                self.stop_reason = f"{procs.SIGNAL_NAMES.get(sig, sig)} received"

    def _start_reaper(self) -> None:
        r, w = os.pipe2(os.O_CLOEXEC)
        try:
            argv = helper_argv("watchdog_singleton.farm.reaper", self.marker, str(self.o.grace))
            self.reaper = self.seams.spawn(argv, ".", procs.clean_environ(dict(os.environ)), capture=False,
                                           stdio=(r, -1, -1)).pid
        finally:
            os.close(r)
        self.reaper_w = w

    # -- waiting and the list -----------------------------------------------------------
    def _wait(self, seconds: float) -> None:
        if seconds <= 0:
            return
        if self.seams.wait is not None:
            self.seams.wait(min(seconds, IDLE_POLL))
            return
        try:
            watch = [self.wakeups.read_fd] if self.nursery.gone else [self.wakeups.read_fd, self.nursery.fileno()]
            select.select(watch, [], [], min(seconds, IDLE_POLL))
        except InterruptedError:
            pass

    def _relist(self) -> None:
        """Tasks added to the list while the farm runs join it (ids of old lines do not change)."""
        if not self.list.changed():
            return
        try:
            added = self.store.add(tasklist_mod.read(self.o.tasklist))
        except Exception as exc:  # the list is being rewritten: take it at the next change
            self.warn(f"farm: cannot reread {self.o.tasklist}: {exc}")
            return
        if self.store.down:  # not added: the database stopped answering; again once it answers
            self.list.again()
            return
        if added:
            self.warn(f"farm: {added} task(s) added from {self.o.tasklist}")


def take_back(store: Guarded, warn: Callable[[str], None]) -> None:
    """Tasks whose lease ran out (a farm killed on another node, or cut off) go back to todo:
    they run a second time, so say it."""
    back = store.sweep()
    if back:
        warn(f"farm: {len(back)} task(s) whose lease ran out (their farm died or was cut off) "
             "went back to todo, to run again")
