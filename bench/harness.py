"""The bench's world: an unprivileged user, private folders, timed whole-process runs, cleanup.

    bench = Bench.start(python=sys.executable)
    try:
        sc = bench.scenario("tick")
        name = sc.job("tick")
        sc.install(name, ["/bin/sleep", "1000000"])
        sample = bench.timed(["/bin/sh", "-c", sc.cron_command(name)], bench.cron_env())
    finally:
        bench.close()

Everything that touches a crontab runs as the unprivileged bench user (created when we run as
root), never as root. Each scenario has its own XDG_STATE_HOME, so `status` sees exactly its
jobs; all scenarios share one private lock folder under /tmp. Cleanup ends only processes this
run started, by PID, and empties the bench user's crontab.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

USERKIT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "tests", "kits")
sys.path.insert(0, USERKIT_DIR)
from userkit import UnprivilegedUser, poll_until, read_bytes, unprivileged_user, user_pids  # noqa: E402  (tests/kits shares it)

BENCH_USER = "wsbench"
CRON_PATH = "/usr/bin:/bin"
TAG = "#watchdog-singleton:"
RUN_TIMEOUT = 120.0  # no single command of ours may take this long; past it the run is killed


class BenchError(Exception):
    """A measurement could not be taken; the message says why."""


@dataclass
class Sample:
    """One whole-process run: wall and CPU seconds (the process and its waited-for children)."""

    wall: float
    cpu: float
    code: int
    output: bytes


def bench_user() -> UnprivilegedUser:
    """As root: the unprivileged `wsbench` user, created if missing. Otherwise: ourselves."""
    try:
        return unprivileged_user(BENCH_USER)
    except RuntimeError as exc:
        raise BenchError(str(exc)) from None


# -- statistics and the table's rows ----------------------------------------------------------
def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


@dataclass
class Row:
    fig: str
    what: str
    ours: str
    ref_name: str = ""
    ref: str = ""
    ratio: Optional[float] = None
    goal: str = ""
    verdict: str = ""  # "met", "MISSED", or "" when the figure is only reported
    n: int = 0


def fmt_time(seconds: float) -> str:
    if seconds != seconds:  # NaN
        return "-"
    if seconds < 1.0:
        return f"{seconds * 1000:.1f} ms" if seconds < 0.1 else f"{seconds * 1000:.0f} ms"
    return f"{seconds:.2f} s"


def fmt_mb(kib: float) -> str:
    return f"{kib / 1024:.1f} MiB"


def fmt_rate(bytes_per_s: float) -> str:
    return f"{bytes_per_s / 1e6:.0f} MB/s"


def compare(fig: str, what: str, ours: Sequence[float], ref_name: str, ref: Sequence[float],
            fmt: Callable[[float], str], goal: str = "", at_most: Optional[float] = None,
            at_least: Optional[float] = None) -> Row:
    """A row with both medians and their ratio (ours / reference), judged against the goal."""
    mine, theirs = median(ours), median(ref)
    ratio = mine / theirs if theirs else None
    verdict = ""
    if ratio is not None and at_most is not None:
        verdict = "met" if ratio <= at_most else "MISSED"
    if ratio is not None and at_least is not None:
        verdict = "met" if ratio >= at_least else "MISSED"
    return Row(fig, what, fmt(mine), ref_name, fmt(theirs), ratio, goal, verdict, len(ours))


def alternate(commands: dict[str, Callable[[], Sample]], reps: int, warmup: int = 1) -> dict[str, list[Sample]]:
    """Run every command `reps` times, interleaved and in a rotating order, so noise hits all alike."""
    names = list(commands)
    for _ in range(warmup):
        for name in names:
            commands[name]()
    runs: dict[str, list[Sample]] = {name: [] for name in names}
    for i in range(reps):
        shift = i % len(names)
        for name in names[shift:] + names[:shift]:
            runs[name].append(commands[name]())
    return runs


def time_process(argv: list[str], env: dict[str, str], cwd: str, timeout: float = RUN_TIMEOUT,
                 **popen_kwargs: Any) -> Sample:
    """Run argv to its end: wall from perf_counter around the whole process, CPU from wait4's rusage."""
    with tempfile.TemporaryFile() as out:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, **popen_kwargs)
        guard = threading.Timer(timeout, kill_pid, (proc.pid,))
        guard.start()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        guard.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        output = out.read()
    if proc.returncode == -signal.SIGKILL and wall >= timeout:
        raise BenchError(f"{argv[:4]} ran longer than {timeout:g} s")
    return Sample(wall, usage.ru_utime + usage.ru_stime, proc.returncode, output)


# -- /proc ------------------------------------------------------------------------------------
def alive(pid: Optional[int]) -> bool:
    """The process exists and is not a zombie (a zombie has closed its files: its lock is free)."""
    if not pid:
        return False
    stat = read_bytes(f"/proc/{pid}/stat")
    return bool(stat) and stat[stat.rindex(b")") + 2:].split()[0] not in (b"Z", b"X")


def status_field(pid: int, key: str) -> Optional[int]:
    """A kB figure from /proc/PID/status (VmRSS, VmHWM), in KiB."""
    for line in read_bytes(f"/proc/{pid}/status").decode(errors="replace").splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return None


def private_kib(pid: int) -> Optional[int]:
    """USS: the KiB only this process holds (Private_Clean + Private_Dirty). RSS also counts the
    interpreter's shared text pages, which every Python process on the host shares."""
    total, seen = 0, False
    for line in read_bytes(f"/proc/{pid}/smaps_rollup").decode(errors="replace").splitlines():
        if line.startswith(("Private_Clean:", "Private_Dirty:")):
            total += int(line.split()[1])
            seen = True
    return total if seen else None


def wakeups(pid: int) -> Optional[int]:
    """How often the process's main thread went to sleep and woke (voluntary context switches)."""
    return status_field(pid, "voluntary_ctxt_switches")


def cpu_ticks(pid: int) -> Optional[int]:
    """utime + stime of the whole process, in clock ticks."""
    stat = read_bytes(f"/proc/{pid}/stat")
    if not stat:
        return None
    fields = stat[stat.rindex(b")") + 2:].split()
    return int(fields[11]) + int(fields[12])


def environ(pid: int) -> list[bytes]:
    return read_bytes(f"/proc/{pid}/environ").split(b"\0")


def cmdline(pid: int) -> bytes:
    return read_bytes(f"/proc/{pid}/cmdline")


def children_of(pid: int) -> list[int]:
    """Direct children of `pid`, from the ppid field of every /proc/N/stat."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = read_bytes(f"/proc/{entry}/stat")
            if stat and int(stat[stat.rindex(b")") + 2:].split()[1]) == pid:
                found.append(int(entry))
    return found


def wait_until(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.002) -> Any:
    """Poll until `condition` returns something truthy; BenchError at the deadline."""
    value = poll_until(condition, timeout, interval)
    if not value:
        raise BenchError(f"timed out after {timeout:g} s waiting for {what}")
    return value


def kill_pid(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


# -- the run ----------------------------------------------------------------------------------
@dataclass
class Bench:
    user: UnprivilegedUser
    python: str
    tag: str
    run_dir: str  # under the user's home: state folders, logs, helper scripts
    tmp_dir: str  # under /tmp: the lock folder (locks belong on a local filesystem)
    schedule: str
    children: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @classmethod
    def start(cls, python: str) -> "Bench":
        user = bench_user()
        tag = secrets.token_hex(3)
        run_dir = tempfile.mkdtemp(prefix=f"ws-bench-{tag}-", dir=user.home)
        tmp_dir = tempfile.mkdtemp(prefix=f"ws-bench-{tag}-")
        for path in (run_dir, tmp_dir):
            os.chown(path, user.uid, user.gid)
        bench = cls(user, python, tag, run_dir, tmp_dir, far_schedule())
        probe = bench.timed([python, "-c", "import watchdog_singleton, typer, crontab, fasteners"],
                            bench.cron_env())
        if probe.code != 0:
            bench.close()
            raise BenchError(f"user {user.name} cannot run {python} with watchdog_singleton: "
                             f"{probe.output.decode(errors='replace').strip()} (make the venv from "
                             "/usr/bin/python3 in a world-readable place)")
        return bench

    @property
    def python_label(self) -> str:
        """How the table names the interpreter that runs our code."""
        in_venv = os.path.exists(os.path.join(os.path.dirname(os.path.dirname(self.python)), "pyvenv.cfg"))
        return "venv python" if in_venv else self.python

    @property
    def lock_dir(self) -> str:
        return os.path.join(self.tmp_dir, "locks")

    def mkdir(self, *parts: str) -> str:
        path = self.run_dir
        for part in parts:  # each level, so the bench user owns every folder it must write in
            path = os.path.join(path, part)
            os.makedirs(path, exist_ok=True)
            os.chown(path, self.user.uid, self.user.gid)
        return path

    def copy_helper(self, source: str) -> str:
        """Copy a helper script into the run folder, where the bench user can read it."""
        target = os.path.join(self.run_dir, os.path.basename(source))
        shutil.copy(source, target)
        os.chown(target, self.user.uid, self.user.gid)
        return target

    def cron_env(self) -> dict[str, str]:
        """What cron gives a job: HOME, LOGNAME, SHELL=/bin/sh, PATH=/usr/bin:/bin."""
        return {"HOME": self.user.home, "LOGNAME": self.user.name, "SHELL": "/bin/sh", "PATH": CRON_PATH}

    def timed(self, argv: list[str], env: dict[str, str], cwd: Optional[str] = None,
              timeout: float = RUN_TIMEOUT) -> Sample:
        """Run argv as the bench user and time it (see time_process)."""
        return time_process(argv, env, cwd or self.user.home, timeout, **self.user.popen_kwargs())

    def alternate_as_user(self, commands: dict[str, list[str]], env: dict[str, str],
                          reps: int) -> dict[str, list[Sample]]:
        """`alternate` run by a timer process that is the bench user already (bench/timer.py).

        Switching user on every Popen stops Python from using vfork: each spawn then costs the
        fork of this whole process, a constant that would pad both sides of a millisecond ratio.
        Cron forks from a small daemon; the timer spawns the way it does.
        """
        timer = self.copy_helper(os.path.join(os.path.dirname(os.path.abspath(__file__)), "timer.py"))
        self.copy_helper(os.path.abspath(__file__))  # the timer imports harness from beside it,
        self.copy_helper(os.path.join(USERKIT_DIR, "userkit.py"))  # and harness imports userkit
        job = {"commands": commands, "env": env, "cwd": self.user.home, "reps": reps}
        proc = subprocess.run([self.python, timer], input=json.dumps(job).encode(), env=env,
                              cwd=self.user.home, capture_output=True, timeout=30 * RUN_TIMEOUT,
                              **self.user.popen_kwargs())
        if proc.returncode != 0:
            raise BenchError(f"the timer failed: {proc.stderr.decode(errors='replace')[-500:]}")
        found = json.loads(proc.stdout)
        return {name: [Sample(w, c, code, out.encode("latin-1")) for w, c, code, out in samples]
                for name, samples in found.items()}

    def spawn(self, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        """Start argv as the bench user and leave it running (a tick that becomes a supervisor)."""
        proc = subprocess.Popen(argv, env=env, cwd=self.user.home, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True, **self.user.popen_kwargs())
        self.children.append(proc)
        return proc

    def reap(self) -> None:
        """Collect the exit of every child that ended, so none lingers as a zombie."""
        self.children = [p for p in self.children if p.poll() is None]

    def scenario(self, label: str) -> "Scenario":
        home = self.mkdir(label, "state")
        return Scenario(self, label, home)

    def crontab(self) -> str:
        proc = subprocess.run(["crontab", "-l"], env=self.cron_env(), cwd=self.user.home,
                              capture_output=True, **self.user.popen_kwargs())
        return proc.stdout.decode(errors="replace") if proc.returncode == 0 else ""

    # -- cleanup --------------------------------------------------------------------------
    def our_pids(self) -> list[int]:
        """The bench user's processes this run started: they name our folders in their command
        line or carry a lock path of ours in their environment (every process of a job's tree)."""
        marks = (self.run_dir.encode(), self.tmp_dir.encode())
        token = f"WATCHDOG_SINGLETON_LOCK={self.lock_dir}/".encode()
        found = []
        for pid in user_pids(self.user.uid):
            if pid == os.getpid() or not alive(pid):
                continue
            if any(m in cmdline(pid) for m in marks) or any(v.startswith(token) for v in environ(pid)):
                found.append(pid)
        return found

    def close(self) -> None:
        for _ in range(3):
            left = self.our_pids()
            if not left:
                break
            for pid in left:
                kill_pid(pid)
            time.sleep(0.2)
        for proc in self.children:
            if proc.poll() is None:
                kill_pid(proc.pid)
            proc.wait()
        self.children.clear()
        if os.getuid() == 0:
            subprocess.run(["crontab", "-u", self.user.name, "-r"], capture_output=True)
        else:
            self.strip_lines(lambda name: name.endswith(f"-{self.tag}"))
        shutil.rmtree(self.run_dir, ignore_errors=True)
        shutil.rmtree(self.tmp_dir, ignore_errors=True)

    def strip_lines(self, ours: Callable[[str], bool]) -> None:
        """Remove from the bench user's crontab the lines of the jobs `ours` names, and no other."""
        lines = self.crontab().splitlines()
        tagged = re.compile(rf" {re.escape(TAG)}([A-Za-z0-9_.@+-]+)$")
        kept = [line for line in lines if not ((m := tagged.search(line)) and ours(m.group(1)))]
        if len(kept) != len(lines):
            subprocess.run(["crontab", "-"], input=("\n".join(kept) + "\n").encode() if kept else b"",
                           env=self.cron_env(), cwd=self.user.home, capture_output=True, check=True,
                           **self.user.popen_kwargs())


def far_schedule() -> str:
    """A daily schedule 12 hours away: the real cron daemon must not fire our lines mid-run;
    we fire them ourselves, the way cron would."""
    later = time.localtime(time.time() + 12 * 3600)
    return f"{later.tm_min} {later.tm_hour} * * *"


@dataclass
class Scenario:
    """One measurement's jobs, under their own XDG_STATE_HOME so counts are exact."""

    bench: Bench
    label: str
    state_home: str
    started: list[str] = field(default_factory=list)  # jobs that may have processes to stop

    @property
    def state_root(self) -> str:
        return os.path.join(self.state_home, "watchdog-singleton", os.uname().nodename)

    def path(self, *parts: str) -> str:
        return os.path.join(self.bench.run_dir, self.label, *parts)

    def job(self, base: str) -> str:
        return f"{base}-{self.bench.tag}"

    def env(self) -> dict[str, str]:
        user = self.bench.user
        return {"HOME": user.home, "USER": user.name, "LOGNAME": user.name, "PATH": CRON_PATH,
                "XDG_STATE_HOME": self.state_home, "WATCHDOG_SINGLETON_LOCK_DIR": self.bench.lock_dir}

    def ws(self, *args: str) -> Sample:
        """The CLI as the bench user: python -m watchdog_singleton ARGS, timed."""
        return self.bench.timed([self.bench.python, "-m", "watchdog_singleton", *args], self.env(),
                                cwd=self.path())

    def ok(self, *args: str) -> Sample:
        sample = self.ws(*args)
        if sample.code != 0:
            raise BenchError(f"watchdog-singleton {' '.join(args[:3])} exited {sample.code}: "
                             f"{sample.output.decode(errors='replace').strip()[-400:]}")
        return sample

    def install(self, name: str, command: list[str], *options: str, start: bool = True) -> Sample:
        if start:
            self.started.append(name)
        extra = () if start else ("--no-start",)
        return self.ok("install", name, "--schedule", self.bench.schedule, *extra, *options, "--", *command)

    def status(self, name: Optional[str] = None) -> Any:
        sample = self.ws("status", *([name] if name else []), "--json")
        if sample.code not in (0, 3):
            raise BenchError(f"status exited {sample.code}: {sample.output.decode(errors='replace')}")
        return json.loads(sample.output)

    def state(self, name: str) -> dict[str, Any]:
        """NAME's run state, read straight from its file: cheap enough to poll every few ms."""
        try:
            with open(os.path.join(self.state_root, "run", f"{name}.json")) as f:
                data: dict[str, Any] = json.load(f)
                return data
        except (OSError, ValueError):
            return {}

    def running_pid(self, name: str, not_pid: Optional[int] = None) -> Optional[int]:
        pid = self.state(name).get("pid")
        return pid if pid and pid != not_pid and alive(pid) else None

    def cron_command(self, name: str) -> str:
        """NAME's crontab line as cron would run it: after the schedule, with \\% turned into %."""
        for line in self.bench.crontab().splitlines():
            if line.endswith(f"{TAG}{name}") and not line.startswith("#"):
                command = line.split(" ", 1)[1] if line.startswith("@") else line.split(" ", 5)[5]
                return command.replace("\\%", "%")
        raise BenchError(f"no enabled crontab line for {name}")

    def fire_tick(self, name: str) -> subprocess.Popen[bytes]:
        """Run NAME's line like cron: /bin/sh -c LINE, cron's environment, left running."""
        return self.bench.spawn(["/bin/sh", "-c", self.cron_command(name)], self.bench.cron_env())

    def resident_ours(self) -> list[int]:
        """Processes of our code that stay alive: Python running watchdog_singleton for this scenario."""
        root = self.state_root.encode()
        return [pid for pid in user_pids(self.bench.user.uid)
                if alive(pid) and b"watchdog_singleton" in cmdline(pid) and root in cmdline(pid)]

    def tree(self, name: str) -> list[int]:
        """Live processes that carry NAME's token: the daemon and everything it started (the
        supervisor carries it too, and is left out)."""
        token = f"WATCHDOG_SINGLETON_JOB={name}".encode()
        return [pid for pid in user_pids(self.bench.user.uid)
                if alive(pid) and token in environ(pid) and b"watchdog_singleton" not in cmdline(pid)]

    def discard(self) -> None:
        """End many jobs at once without `uninstall` for each: kill their processes by PID and
        drop their crontab lines, so they weigh on no later figure."""
        names = set(self.started)
        tokens = {f"WATCHDOG_SINGLETON_JOB={name}".encode() for name in names}
        for pid in user_pids(self.bench.user.uid):
            if alive(pid) and tokens & set(environ(pid)):
                kill_pid(pid)
        self.bench.strip_lines(lambda name: name in names)
        self.started.clear()

    def cleanup(self) -> None:
        for name in self.started:
            self.ws("uninstall", name)
        self.started.clear()
        self.bench.reap()
