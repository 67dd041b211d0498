#!/usr/bin/env python3
"""A bounded fault-injection soak: does each job keep exactly one copy running under abuse?

    python tests/soak/soak.py [--seconds 120] [--seed S] [--jobs 2] [--max-gap 7]

Installs a few jobs whose daemon carries a unique marker argument, then for --seconds:
  * a sampler counts every 50 ms the live copies of each job's daemon (from /proc/*/cmdline,
    zombies excluded);
  * a cron stand-in fires every job's crontab line every second, the way cron would (no real
    cron minute passes often enough to recover anything in a short soak);
  * a fault injector, every 0.3-1 s, picks one of: SIGKILL a supervisor, a daemon or both,
    delete the lock file or the whole lock folder, a burst of extra ticks (sometimes with the
    lock file deleted in their midst), a "race start" (the tree dies, launchers start 15 ms
    apart and the lock file is deleted the moment the first one holds it), a manual `run`
    (foreground or --detach), `restart`.
Then faults stop and every job must settle back to exactly one copy. The script prints the
samples taken, the faults injected by kind, the maximum copies seen and the longest gap with
zero copies per job. Exit 0 only if no job ever ran two copies, no zero-copy gap exceeded
--max-gap and every job settled; 1 otherwise; 2 if the soak could not be set up.

Not collected by pytest (no test_ prefix): CI runs `python tests/soak/soak.py --seconds 30` with the
test venv's python. As root it runs everything as the unprivileged user `wssoak` (created if
missing) and never touches root's crontab; at the end that user's processes are killed by pid
and its crontab removed. As a normal user it runs as you, adds and removes only its own tagged
crontab lines, and kills only the processes of its own jobs.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import json
import os
import random
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import IO, Callable, Optional

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "kits"))
from userkit import UnprivilegedUser, proc_uid, read_bytes, unprivileged_user, user_pids  # noqa: E402

SOAK_USER = "wssoak"
CRON_PATH = "/usr/bin:/bin"
SAMPLE_SECONDS = 0.05
# The job's settings: small, so that recovery is quick and a long gap stands out.
GRACE, BACKOFF_INITIAL, BACKOFF_MAX, MIN_UPTIME = 1.0, 0.2, 2.0, 1.0
# Worst legitimate zero-copy gap: a daemon killed at the end of a quick-failure streak waits
# BACKOFF_MAX; a dead supervisor waits for the next tick (1 s) plus a launcher start; a
# `restart` stops the tree within GRACE. Both can chain once (a fault lands inside a gap), and
# interpreter start-ups on a loaded CI machine take up to ~1 s each: 2 + 1 + 1 + 3 = 7 s.
DEFAULT_MAX_GAP = BACKOFF_MAX + 1.0 + GRACE + 3.0
SETTLE_STABLE = 2.0  # after the faults: one copy must hold this long for a job to count as settled
DAEMON_CODE = "import time; [time.sleep(60) for _ in iter(int, 1)]"  # forever, on one line
FAULT_WEIGHTS = {
    "kill_daemon": 3, "kill_supervisor": 2, "kill_tree": 2, "delete_lock": 2, "delete_lock_dir": 1,
    "tick_burst": 3, "race_start": 2, "run_foreground": 1, "run_detach": 1, "restart": 1,
}
MAX_CHILDREN = 60  # background commands in flight (long-lived supervisors included)


# -- /proc ------------------------------------------------------------------------------------

def proc_stat(pid: int) -> Optional[tuple[str, int, int]]:
    """(state, ppid, start time in clock ticks), or None if the process is gone."""
    raw = read_bytes(f"/proc/{pid}/stat")
    if not raw:
        return None
    fields = raw[raw.rindex(b")") + 2:].split()  # comm may hold spaces and ')'
    return fields[0].decode(), int(fields[1]), int(fields[19])


def cmdline(pid: int) -> list[str]:
    return [a.decode(errors="replace") for a in read_bytes(f"/proc/{pid}/cmdline").split(b"\0")[:-1]]


def lock_holders(path: str) -> set[int]:
    """The pids /proc/locks names as holding a lock on the file at `path` (read, never locked)."""
    try:
        st = os.stat(path)
    except OSError:
        return set()
    wanted = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    holders = set()
    for line in read_bytes("/proc/locks").decode().splitlines():
        parts = line.split()
        if len(parts) > 5 and parts[1] != "->" and parts[5] == wanted:
            holders.add(int(parts[4]))
    return holders


def kill_verified(pid: int, start: int, check: Callable[[int], bool]) -> bool:
    """SIGKILL `pid` only if it is still the process (pid, start) and `check` accepts it.

    The pidfd pins the process: once it is open and the start time matches, the signal cannot
    hit a newcomer that reused the pid.
    """
    try:
        fd = os.pidfd_open(pid)
    except (ProcessLookupError, OSError):
        return False
    try:
        info = proc_stat(pid)
        if info is None or info[2] != start or info[0] in ("Z", "X") or not check(pid):
            return False
        signal.pidfd_send_signal(fd, signal.SIGKILL)
        return True
    except ProcessLookupError:
        return False
    finally:
        os.close(fd)


# -- the soak user and the commands run as it -------------------------------------------------

@dataclass
class User(UnprivilegedUser):
    dedicated: bool = False  # the soak user we created for this: all its processes and its crontab are ours


def soak_user() -> User:
    try:
        base = unprivileged_user(SOAK_USER)
    except RuntimeError as exc:
        raise SystemExit(f"soak: {exc}") from None
    return User(base.name, base.uid, base.gid, base.home, dedicated=os.getuid() == 0)


@dataclass
class Child:
    kind: str
    job: str
    proc: subprocess.Popen[bytes]
    out: IO[bytes]


class Runner:
    """Runs commands as the soak user with a clean environment, and reaps the background ones."""

    def __init__(self, user: User, python: str, workdir: str) -> None:
        self.user = user
        self.python = python
        self.workdir = workdir
        self.children: list[Child] = []
        self.lock = threading.Lock()
        self.failures: collections.Counter[str] = collections.Counter()  # "kind: message" -> count
        self.tick_output: collections.Counter[str] = collections.Counter()

    def env(self) -> dict[str, str]:
        return {"HOME": self.user.home, "USER": self.user.name, "LOGNAME": self.user.name,
                "PATH": CRON_PATH, "XDG_STATE_HOME": os.path.join(self.workdir, "state")}

    def cron_env(self) -> dict[str, str]:
        return {"HOME": self.user.home, "LOGNAME": self.user.name, "SHELL": "/bin/sh", "PATH": CRON_PATH}

    def run(self, argv: list[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(argv, env=self.env(), cwd=self.workdir, stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=timeout, **self.user.popen_kwargs())

    def ws(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return self.run([self.python, "-m", "watchdog_singleton", *args], timeout=timeout)

    def background(self, kind: str, job: str, argv: list[str], cron: bool = False) -> bool:
        """Start argv without waiting; False if too many are in flight already."""
        with self.lock:
            if len(self.children) >= MAX_CHILDREN:
                return False
            # An unnamed file of ours: nothing to clean up, and the child may write to it freely.
            out = tempfile.TemporaryFile()
            proc = subprocess.Popen(argv, env=self.cron_env() if cron else self.env(),
                                    cwd=self.user.home if cron else self.workdir,
                                    stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True, **self.user.popen_kwargs())
            self.children.append(Child(kind, job, proc, out))
            return True

    def reap(self) -> None:
        """Collect finished background commands; note what printed or failed.

        A negative code is a signal: expected, the soak kills supervisors started this way.
        """
        with self.lock:
            running = []
            for child in self.children:
                code = child.proc.poll()
                if code is None:
                    running.append(child)
                    continue
                child.out.seek(0)
                text = child.out.read().decode(errors="replace").strip()
                child.out.close()
                last = text.splitlines()[-1][:160] if text else ""
                if child.kind == "tick" and text:
                    self.tick_output[last] += 1  # cron would mail this to the user
                elif code > 0:
                    self.failures[f"{child.kind} exit {code}: {last}"] += 1
            self.children = running

    def wait_all(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.children and time.monotonic() < deadline:
            self.reap()
            time.sleep(0.05)
        self.reap()


# -- jobs -------------------------------------------------------------------------------------

@dataclass
class Job:
    name: str
    marker: str
    argv: tuple[str, ...] = ()  # the daemon's exact command line, as /proc shows it
    lock_path: str = ""
    state_file: str = ""  # its run state: the supervisor's pid and start time, to kill it safely
    stderr_log: str = ""


def daemon_python() -> str:
    return "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else sys.executable


def install_jobs(runner: Runner, count: int, tag: str) -> list[Job]:
    jobs = []
    for i in range(count):
        name = f"soak{i}-{tag}"
        job = Job(name, marker=f"wssoak-marker-{name}")
        argv = [daemon_python(), "-S", "-c", DAEMON_CODE, job.marker]
        job.argv = tuple(argv)
        jobs.append(job)  # appended first, so that a half-done install is still uninstalled
        proc = runner.ws("install", name, "--grace", str(GRACE), "--backoff-initial", str(BACKOFF_INITIAL),
                         "--backoff-max", str(BACKOFF_MAX), "--min-uptime", str(MIN_UPTIME), "--", *argv)
        if proc.returncode != 0:
            raise RuntimeError(f"install {name} failed ({proc.returncode}): {proc.stderr.strip()}")
        info = json.loads(runner.ws("status", name, "--json").stdout)
        job.lock_path, job.stderr_log = info["lock_path"], info["stderr_log"]
        job.state_file = os.path.join(runner.workdir, "state", "watchdog-singleton", os.uname().nodename,
                                      "run", f"{name}.json")
        if not os.path.exists(job.state_file):
            raise RuntimeError(f"no run state at {job.state_file} after install: has its layout changed?")
    return jobs


def cron_commands(runner: Runner) -> dict[str, str]:
    """Each job's command as cron would run it: what follows the schedule, with \\% made %."""
    proc = runner.run(["crontab", "-l"], timeout=30)
    commands = {}
    for line in proc.stdout.splitlines():
        match = re.search(r" #watchdog-singleton:(\S+)$", line)
        if not match or line.startswith("#"):
            continue  # not ours, or a disabled entry
        command = line.split(" ", 1)[1] if line.startswith("@") else line.split(" ", 5)[5]
        commands[match.group(1)] = command.replace("\\%", "%")
    return commands


# -- what happens during the soak -------------------------------------------------------------

@dataclass
class JobStats:
    max_copies: int = 0
    copies: int = 0
    zero_since: Optional[float] = None
    longest_gap: float = 0.0
    longest_gap_at: float = 0.0
    zero_total: float = 0.0
    over_one_at: list[float] = field(default_factory=list)


class Soak:
    def __init__(self, runner: Runner, jobs: list[Job], rng: random.Random) -> None:
        self.runner = runner
        self.jobs = jobs
        self.by_argv = {job.argv: job for job in jobs}
        self.rng = rng
        self.t0 = time.monotonic()
        self.stats = {job.name: JobStats() for job in jobs}
        self.daemons: dict[str, dict[int, int]] = {job.name: {} for job in jobs}  # pid -> start
        self.samples = 0
        self.sample_spacing = 0.0  # the longest time between two samples: how sharp the gaps are
        self.faults: collections.Counter[str] = collections.Counter()
        self.skipped: collections.Counter[str] = collections.Counter()
        self.ticks = 0
        self.events: list[tuple[float, str, str, str]] = []  # (t, job, what, detail): the timeline
        self.lock = threading.Lock()
        self.stop_sampling = threading.Event()
        self.stop_ticking = threading.Event()

    def now(self) -> float:
        return time.monotonic() - self.t0

    def event(self, job: str, what: str, detail: str = "") -> None:
        with self.lock:
            self.events.append((self.now(), job, what, detail))

    # -- sampling -----------------------------------------------------------------------------
    def scan(self) -> dict[str, dict[int, int]]:
        found: dict[str, dict[int, int]] = {job.name: {} for job in self.jobs}
        for pid in user_pids(self.runner.user.uid):
            job = self.by_argv.get(tuple(cmdline(pid)))
            info = proc_stat(pid) if job else None
            if job and info and info[0] not in ("Z", "X"):
                found[job.name][pid] = info[2]
        return found

    def sampler(self) -> None:
        next_at = time.monotonic()
        last = None
        while not self.stop_sampling.is_set():
            found = self.scan()
            t = self.now()
            if last is not None:
                self.sample_spacing = max(self.sample_spacing, t - last)
            last = t
            with self.lock:
                self.samples += 1
                self.daemons = found
            for name, pids in found.items():
                self.record(name, len(pids), t, pids)
            next_at += SAMPLE_SECONDS
            time.sleep(max(0.0, next_at - time.monotonic()))
            next_at = max(next_at, time.monotonic() - SAMPLE_SECONDS)  # no burst after a stall
        for stats in self.stats.values():  # a gap still open at the end counts too
            if stats.zero_since is not None:
                self.close_gap(stats, self.now())

    def record(self, name: str, copies: int, t: float, pids: dict[int, int]) -> None:
        stats = self.stats[name]
        if copies != stats.copies:
            detail = f"{stats.copies} -> {copies} pids {sorted(pids)}"
            if copies > 1:
                detail += " parents " + ", ".join(f"{p}<-{self.describe((proc_stat(p) or ('', 0, 0))[1])}"
                                                  for p in sorted(pids))
            self.event(name, "copies", detail)
        if copies > 1:
            stats.over_one_at.append(t)
        stats.max_copies = max(stats.max_copies, copies)
        if copies == 0 and stats.zero_since is None:
            stats.zero_since = t
        elif copies > 0 and stats.zero_since is not None:
            self.close_gap(stats, t)
        stats.copies = copies

    @staticmethod
    def close_gap(stats: JobStats, t: float) -> None:
        assert stats.zero_since is not None
        gap = t - stats.zero_since
        stats.zero_total += gap
        if gap > stats.longest_gap:
            stats.longest_gap, stats.longest_gap_at = gap, stats.zero_since
        stats.zero_since = None

    @staticmethod
    def describe(pid: int) -> str:
        args = cmdline(pid)
        return f"{pid}({' '.join(a for a in args if not a.startswith('/'))[-60:] or '?'})"

    # -- the cron stand-in ----------------------------------------------------------------------
    def tick(self) -> None:
        commands = cron_commands(self.runner)
        for job in self.jobs:
            command = commands.get(job.name)
            if command is None:
                self.event(job.name, "no-cron-line")
                continue
            if self.runner.background("tick", job.name, ["/bin/sh", "-c", command], cron=True):
                with self.lock:
                    self.ticks += 1

    def ticker(self, period: float) -> None:
        while not self.stop_ticking.wait(period):
            self.tick()
            self.runner.reap()

    # -- faults -----------------------------------------------------------------------------------
    def inject(self, seconds: float, skip: list[str]) -> None:
        kinds = [k for k in FAULT_WEIGHTS if k not in skip]
        weights = [FAULT_WEIGHTS[k] for k in kinds]
        end = time.monotonic() + seconds
        if not kinds:
            time.sleep(seconds)  # every fault left out: only the cron stand-in ticks
        # Faults run on a few workers: a status or restart takes a while, and overlapping faults
        # are the point of the exercise.
        with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
            while time.monotonic() < end and kinds:
                kind = self.rng.choices(kinds, weights)[0]
                job = self.rng.choice(self.jobs)
                burst = self.rng.randint(2, 3)
                pool.submit(self.fault, kind, job, burst)
                time.sleep(self.rng.uniform(0.3, 1.0))

    def fault(self, kind: str, job: Job, burst: int) -> None:
        try:
            done = getattr(self, f"fault_{kind}")(job, burst)
        except Exception as exc:  # a soak must not die on one fault; say what went wrong
            self.event(job.name, kind, f"error {exc!r}")
            done = False
        with self.lock:
            (self.faults if done else self.skipped)[kind] += 1

    def fault_kill_daemon(self, job: Job, _: int) -> bool:
        with self.lock:
            daemons = dict(self.daemons[job.name])
        if not daemons:
            return False
        pid = self.rng.choice(sorted(daemons))
        if kill_verified(pid, daemons[pid], lambda p: tuple(cmdline(p)) == job.argv):
            self.event(job.name, "kill_daemon", str(pid))
            return True
        return False

    def recorded_supervisor(self, job: Job) -> Optional[tuple[int, int]]:
        """(pid, start time) of the supervisor as it recorded itself in the job's run state."""
        try:
            with open(job.state_file) as f:
                state = json.load(f)
        except (OSError, ValueError):
            return None
        pid, start = state.get("supervisor_pid"), state.get("supervisor_start")
        return (pid, start) if pid and start is not None else None

    def kill_supervisor(self, job: Job, pid: int, start: int) -> bool:
        def is_supervisor(p: int) -> bool:
            args = cmdline(p)
            # The resident supervisor is `python -I -S -c "...watchdog_singleton.supervisor.resident..." ... NAME FD`.
            return proc_uid(p) == self.runner.user.uid and "watchdog_singleton" in " ".join(args) and job.name in args

        return kill_verified(pid, start, is_supervisor)

    def fault_kill_supervisor(self, job: Job, _: int) -> bool:
        proc = self.runner.ws("status", job.name, "--json", timeout=60)
        if proc.returncode not in (0, 3):
            self.event(job.name, "kill_supervisor", f"status exit {proc.returncode}: {proc.stderr.strip()}")
            return False
        pid = json.loads(proc.stdout).get("supervisor_pid")
        recorded = self.recorded_supervisor(job)
        # The start time to check the pid against is the one the supervisor recorded itself;
        # if the state names another pid, a new supervisor came since status ran: leave it alone.
        if not pid or not recorded or recorded[0] != pid:
            return False
        if self.kill_supervisor(job, *recorded):
            self.event(job.name, "kill_supervisor", str(pid))
            return True
        return False

    def kill_tree(self, job: Job) -> list[str]:
        recorded = self.recorded_supervisor(job)
        with self.lock:
            daemons = dict(self.daemons[job.name])
        killed = []
        if recorded and self.kill_supervisor(job, *recorded):
            killed.append(f"supervisor {recorded[0]}")
        for pid, start in daemons.items():
            if kill_verified(pid, start, lambda p: tuple(cmdline(p)) == job.argv):
                killed.append(f"daemon {pid}")
        return killed

    def fault_kill_tree(self, job: Job, burst: int) -> bool:
        """The supervisor and the daemon at once, as the OOM killer or a `kill -9 -1` would;
        half the time cron fires right after, so launchers race to start the job afresh."""
        killed = self.kill_tree(job)
        if not killed:
            return False
        self.event(job.name, "kill_tree", ", ".join(killed))
        if self.rng.random() < 0.5:
            self.fault_tick_burst(job, burst)
        return True

    def fault_race_start(self, job: Job, _: int) -> bool:
        """The nastiest timing of the faults above: the tree dies, launchers start 15 ms apart,
        and the lock file is deleted the moment the first launcher holds it (not the brief hold
        of the crontab line's flock(1) pre-check), while the next launcher is a step behind.
        Whatever the timing, only one copy may end up running."""
        command = cron_commands(self.runner).get(job.name)
        before = set(user_pids(self.runner.user.uid))
        killed = self.kill_tree(job)
        if command is None or not killed:
            return False
        self.event(job.name, "race_start", f"killed {', '.join(killed)}; 5 ticks 15 ms apart")
        start = time.monotonic()
        launched = 0
        deleted_at: Optional[float] = None
        while time.monotonic() - start < 0.6:
            if launched < 5 and time.monotonic() >= start + 0.015 * launched:
                launched += self.runner.background("tick", job.name, ["/bin/sh", "-c", command], cron=True)
            if deleted_at is None and any("watchdog_singleton" in cmdline(pid)
                                          for pid in lock_holders(job.lock_path) - before):
                try:
                    os.unlink(job.lock_path)
                    deleted_at = time.monotonic() - start
                    self.event(job.name, "race_start", f"a launcher holds the lock {deleted_at * 1000:.0f} ms "
                                                       "after the first tick: deleted it")
                except FileNotFoundError:
                    pass
            time.sleep(0.001)
        with self.lock:
            self.ticks += launched
        return True

    def fault_delete_lock(self, job: Job, _: int) -> bool:
        try:
            os.unlink(job.lock_path)
        except FileNotFoundError:
            return False
        self.event(job.name, "delete_lock", job.lock_path)
        return True

    def fault_delete_lock_dir(self, job: Job, _: int) -> bool:
        folder = os.path.dirname(job.lock_path)
        if not os.path.isdir(folder):
            return False
        shutil.rmtree(folder, ignore_errors=True)  # what a /tmp cleaner does; shared by all jobs
        self.event("*", "delete_lock_dir", folder)
        return True

    def fault_tick_burst(self, job: Job, burst: int) -> bool:
        """Several launchers within 0.3 s (cron firing late, a user's manual tick), half the time
        with the lock file deleted in their midst: while one launcher is on its way from taking
        the lock to recording its supervisor, that is where a second copy could slip in."""
        command = cron_commands(self.runner).get(job.name)
        if command is None:
            return False
        plan = [(self.rng.uniform(0.0, 0.3), "tick") for _ in range(burst)]
        if self.rng.random() < 0.5:
            plan.append((self.rng.uniform(0.05, 0.25), "delete"))
        start = time.monotonic()
        started = 0
        for offset, action in sorted(plan):
            time.sleep(max(0.0, start + offset - time.monotonic()))
            if action == "tick":
                started += self.runner.background("tick", job.name, ["/bin/sh", "-c", command], cron=True)
            elif self.fault_delete_lock(job, 0):
                with self.lock:
                    self.faults["delete_lock"] += 1
        with self.lock:
            self.ticks += started
        self.event(job.name, "tick_burst", str(started))
        return started > 0

    def fault_run_foreground(self, job: Job, _: int) -> bool:
        # What a user types in a shell: it supervises in the foreground if it wins the lock.
        started = self.runner.background("run_foreground", job.name,
                                         [self.runner.python, "-m", "watchdog_singleton", "run", job.name])
        self.event(job.name, "run_foreground")
        return started

    def fault_run_detach(self, job: Job, _: int) -> bool:
        started = self.runner.background("run_detach", job.name,
                                         [self.runner.python, "-m", "watchdog_singleton", "run", "--detach",
                                          job.name])
        self.event(job.name, "run_detach")
        return started

    def fault_restart(self, job: Job, _: int) -> bool:
        started = self.runner.background("restart", job.name,
                                         [self.runner.python, "-m", "watchdog_singleton", "restart", job.name])
        self.event(job.name, "restart")
        return started

    # -- after the faults ----------------------------------------------------------------------
    def settle(self, timeout: float) -> dict[str, bool]:
        """Wait until every job has held exactly one copy for SETTLE_STABLE seconds."""
        deadline = time.monotonic() + timeout
        stable_since: dict[str, Optional[float]] = {job.name: None for job in self.jobs}
        while True:
            with self.lock:
                counts = {name: len(pids) for name, pids in self.daemons.items()}
            t = time.monotonic()
            for name, count in counts.items():
                if count != 1:
                    stable_since[name] = None
                elif stable_since[name] is None:
                    stable_since[name] = t
            settled = {n: s is not None and t - s >= SETTLE_STABLE for n, s in stable_since.items()}
            if all(settled.values()) or t >= deadline:
                return settled
            time.sleep(SAMPLE_SECONDS)


# -- clean-up ---------------------------------------------------------------------------------

def cleanup(runner: Runner, jobs: list[Job], workdir: str) -> None:
    """Leave nothing behind, whatever happened: entries, definitions, processes, files."""
    user = runner.user
    for job in jobs:
        try:
            proc = runner.ws("uninstall", job.name, timeout=60)
            if proc.returncode not in (0, 4):
                print(f"soak: uninstall {job.name}: {proc.stderr.strip()}", file=sys.stderr)
        except subprocess.TimeoutExpired:
            print(f"soak: uninstall {job.name} timed out", file=sys.stderr)
    tokens = {f"WATCHDOG_SINGLETON_JOB={job.name}".encode() for job in jobs}

    def leftovers() -> list[int]:
        found = []
        for pid in user_pids(user.uid):
            info = proc_stat(pid)
            if pid == os.getpid() or info is None or info[0] in ("Z", "X"):
                continue  # a zombie is dead already; its parent (maybe init) reaps it
            if not user.dedicated:
                # As yourself, only what this soak started: its daemons and commands.
                environ = set(read_bytes(f"/proc/{pid}/environ").split(b"\0"))
                args = read_bytes(f"/proc/{pid}/cmdline")
                if not (tokens & environ or workdir.encode() in args
                        or any(job.name.encode() in args.split(b"\0") for job in jobs)):
                    continue
            found.append(pid)
        return found

    for _ in range(5):
        left = leftovers()
        if not left:
            break
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)  # one pid at a time, never by name
            except ProcessLookupError:
                pass
        runner.wait_all(1.0)
    else:
        print(f"soak: could not end pids {leftovers()}", file=sys.stderr)
    runner.wait_all(1.0)
    if user.dedicated:
        subprocess.run(["crontab", "-u", user.name, "-r"], capture_output=True)
    folders = {os.path.dirname(job.lock_path) for job in jobs if job.lock_path}
    for job in jobs:
        if job.lock_path:
            try:
                os.unlink(job.lock_path)
            except OSError:
                pass
    for folder in folders:  # the private lock folder: the supervisor files, the shared resident's
        if os.path.isdir(folder) and not os.path.islink(folder) and os.stat(folder).st_uid == user.uid:
            shutil.rmtree(folder, ignore_errors=True)
    shutil.rmtree(workdir, ignore_errors=True)


# -- report -----------------------------------------------------------------------------------

def report(soak: Soak, args: argparse.Namespace, settled: dict[str, bool], logs: dict[str, str]) -> int:
    failed = []
    print()
    print(f"soak: {args.seconds:g} s of faults, seed {args.seed}, {len(soak.jobs)} job(s), "
          f"tick every {args.tick_period:g} s")
    print(f"samples taken: {soak.samples} (every {SAMPLE_SECONDS * 1000:.0f} ms; "
          f"longest spacing {soak.sample_spacing * 1000:.0f} ms)")
    print(f"ticks fired by the cron stand-in and bursts: {soak.ticks}")
    total = sum(soak.faults.values())
    print(f"faults injected: {total}")
    for kind in FAULT_WEIGHTS:
        idle = soak.skipped.get(kind, 0)
        note = "   (left out: --skip)" if kind in args.skip else f"   ({idle} found nothing to do)" if idle else ""
        print(f"  {kind:<16} {soak.faults.get(kind, 0):>5}{note}")
    print()
    header = ("JOB", "MAX COPIES", "LONGEST ZERO GAP", "AT", "ZERO TOTAL", "SETTLED", "RESULT")
    rows = [header]
    for job in soak.jobs:
        s = soak.stats[job.name]
        problems = []
        if s.max_copies > 1:
            problems.append(f"{s.max_copies} copies")
        if s.longest_gap > args.max_gap:
            problems.append(f"gap > {args.max_gap:g} s")
        if not settled.get(job.name):
            problems.append("did not settle")
        if problems:
            failed.append((job, problems))
        rows.append((job.name, str(s.max_copies), f"{s.longest_gap:.2f} s", f"t={s.longest_gap_at:.1f}",
                     f"{s.zero_total:.1f} s", "yes" if settled.get(job.name) else "NO",
                     "ok" if not problems else "FAIL: " + ", ".join(problems)))
    widths = [max(len(r[c]) for r in rows) for c in range(len(header))]
    for r in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip())
    if soak.runner.failures:
        print("\ncommands that failed (count: kind, exit code, last line):")
        for text, count in soak.runner.failures.most_common(10):
            print(f"  {count:>4}  {text}")
    if soak.runner.tick_output:
        print("\nticks that printed something (cron would mail it):")
        for text, count in soak.runner.tick_output.most_common(10):
            print(f"  {count:>4}  {text}")
    for job, problems in failed:
        s = soak.stats[job.name]
        moments = s.over_one_at[:1] + ([s.longest_gap_at] if s.longest_gap > args.max_gap else [])
        print(f"\n{job.name}: {', '.join(problems)}; the timeline around it:")
        shown = set()
        for t in moments:
            for event in soak.events:
                if t - 6 <= event[0] <= t + 3 and event[1] in (job.name, "*") and event not in shown:
                    shown.add(event)
        for t, _, what, detail in sorted(shown):
            print(f"  t={t:7.2f}  {what:<16} {detail}")
        if logs.get(job.name):
            print("  last lines of its stderr log:\n    " + "\n    ".join(logs[job.name].splitlines()[-15:]))
    if args.event_log:
        with open(args.event_log, "w") as f:
            for t, name, what, detail in soak.events:
                f.write(f"{t:8.3f}  {name:<16} {what:<16} {detail}\n")
        print(f"\nevent log written to {args.event_log}")
    print("\nresult:", "PASS" if not failed else "FAIL")
    return 0 if not failed else 1


def tail(path: str, lines: int = 30) -> str:
    text = read_bytes(path).decode(errors="replace")
    return "\n".join(text.splitlines()[-lines:])


# -- main -------------------------------------------------------------------------------------

def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=120.0, help="how long to inject faults (default 120)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: a random one, printed)")
    p.add_argument("--jobs", type=int, default=2, choices=range(1, 6), metavar="K", help="jobs to run (1-5, default 2)")
    p.add_argument("--max-gap", type=float, default=DEFAULT_MAX_GAP,
                   help=f"longest acceptable zero-copy gap in seconds (default {DEFAULT_MAX_GAP:g})")
    p.add_argument("--tick-period", type=float, default=1.0, help="seconds between cron stand-in ticks")
    p.add_argument("--python", default=sys.executable,
                   help="the interpreter with watchdog_singleton installed (default: this one)")
    p.add_argument("--skip", action="append", default=[], choices=sorted(FAULT_WEIGHTS), metavar="FAULT",
                   help=f"leave out this kind of fault (repeatable): {', '.join(FAULT_WEIGHTS)}")
    p.add_argument("--event-log", help="write the whole timeline of faults and copy counts here")
    args = p.parse_args(argv)
    if args.seed is None:
        args.seed = secrets.randbelow(10**6)
    rng = random.Random(args.seed)

    user = soak_user()
    tag = secrets.token_hex(3)
    workdir = os.path.join(user.home, f"soak-{tag}")
    os.makedirs(workdir)
    os.chown(workdir, user.uid, user.gid)
    runner = Runner(user, args.python, workdir)
    probe = runner.run([args.python, "-c", "import watchdog_singleton"], timeout=60)
    if probe.returncode != 0:
        shutil.rmtree(workdir, ignore_errors=True)
        print(f"soak: {user.name} cannot run {args.python}: {probe.stderr.strip()} "
              "(make the venv from /usr/bin/python3 in a world-readable place)", file=sys.stderr)
        return 2
    print(f"soak: seed {args.seed}, user {user.name} (uid {user.uid}), {args.jobs} job(s), "
          f"{args.seconds:g} s of faults", flush=True)

    jobs: list[Job] = []
    threads: list[threading.Thread] = []
    soak: Optional[Soak] = None
    try:
        try:
            jobs = install_jobs(runner, args.jobs, tag)
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            print(f"soak: {exc}", file=sys.stderr)
            return 2
        soak = Soak(runner, jobs, rng)
        threads = [threading.Thread(target=soak.sampler, daemon=True),
                   threading.Thread(target=soak.ticker, args=(args.tick_period,), daemon=True)]
        for thread in threads:
            thread.start()
        soak.inject(args.seconds, args.skip)
        # Faults over: cron keeps ticking, and every job must come back to one copy.
        settled = soak.settle(args.max_gap + SETTLE_STABLE)
        soak.stop_ticking.set()
        soak.stop_sampling.set()
        for thread in threads:
            thread.join(timeout=10)
        logs = {job.name: tail(job.stderr_log) for job in jobs}
        return report(soak, args, settled, logs)
    finally:
        if soak is not None:
            soak.stop_ticking.set()
            soak.stop_sampling.set()
        for thread in threads:
            thread.join(timeout=10)
        cleanup(runner, jobs, workdir)


if __name__ == "__main__":
    sys.exit(main())
