"""Figure 11, many jobs of one user against supervisord (issue 19): python bench/scale_bench.py [--quick]

N jobs of the bench user (50; --quick 10), each the same trivial sleeper, against one
supervisord with N programs running the same sleeper; and one job against one program. All
four setups run at once and are measured over the same window, so the machine's noise hits
both sides alike. For each side: the resident processes (ours: every process of the jobs
that is not a daemon, i.e. the supervisors; theirs: supervisord itself), their total RSS,
their total USS (Private_Clean + Private_Dirty of /proc/PID/smaps_rollup) and their idle
wake-ups per minute. Goals (issue 19): USS at most 2x supervisord's, RSS at most 3x, wake-ups
at most supervisord's.

A wake-up is one voluntary context switch (voluntary_ctxt_switches of /proc/PID/task/TID/status,
summed over the process's threads): a thread switches out voluntarily only when it goes to
sleep, so each one is one sleep and the wake that ends it (a short block on the disk inside one
wake counts too: a slight upper bound). Involuntary switches are left out:
they count preemptions by other processes while the thread runs, which says how busy the
machine is, not how often the process wakes (schedstat's run count adds both up).

supervisord is installed at bench time with pip into a throwaway venv made from
/usr/bin/python3 in the run folder; when pip cannot get it the rows say "not measured" and
the figure still counts as measured. Cron never fires during the window: the jobs' schedule is
12 hours away and `install` starts them. At the end, also after a failure, every job is
uninstalled and supervisord is stopped by its PID (its programs by theirs if it does not stop).

Another way of running our jobs is one more entry of MODES: its install options, the same rows.
`scale_figure` has the shape of a bench/figures.py figure, so run.py lists it as figure 11.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Optional

from figures import QUICK, Plan, alone_parser, run_alone
from harness import (
    Bench,
    BenchError,
    Row,
    Scenario,
    alive,
    children_of,
    cmdline,
    compare,
    environ,
    fmt_mb,
    kill_pid,
    median,
    private_kib,
    status_field,
    wait_until,
)
from userkit import read_bytes, user_pids

from watchdog_singleton.supervisor.lockwatch import CHECK_SECONDS

SYSTEM_PYTHON = "/usr/bin/python3"
SLEEPER = ["/bin/sleep", "1000000"]
# The ways of running our jobs this figure compares with supervisord: a label and the extra
# `install` options of every job. One more mode is one more line here.
MODES: list[tuple[str, list[str]]] = [
    ("per-job supervisors", []),
    ("one shared supervisor", ["--shared"]),
]
JOBS = {"full": 50, "quick": 10}
WINDOW = {"full": 180.0, "quick": 10.0}  # full: 3 whole periods of a 60 s lock watch
SETTLE = 2.0  # after the last start, before the window: start-up chores are over
GOALS = {"RSS": 3.0, "USS": 2.0, "wake-ups": 1.0}
PIP_TIMEOUT = 180.0
STOP_WAIT = 15.0


@dataclass
class Side:
    """One setup measured in the window: its resident processes and what they weighed and did."""

    label: str
    pids: list[int] = field(default_factory=list)
    rss: list[float] = field(default_factory=list)  # KiB, total over `pids`, one per sample
    uss: list[float] = field(default_factory=list)
    woke: int = 0

    def sample(self) -> None:
        for pid in self.pids:
            if not alive(pid):
                raise BenchError(f"{self.label}: resident process {pid} went away during the window")
        self.rss.append(sum(status_field(pid, "VmRSS") or 0 for pid in self.pids))
        self.uss.append(sum(private_kib(pid) or 0 for pid in self.pids))

    def switches(self) -> int:
        return sum(voluntary_switches(pid) for pid in self.pids)


def voluntary_switches(pid: int) -> int:
    """Voluntary context switches of every thread of `pid` (each one is a sleep, then a wake)."""
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0
    for tid in tasks:
        for line in read_bytes(f"/proc/{pid}/task/{tid}/status").decode(errors="replace").splitlines():
            if line.startswith("voluntary_ctxt_switches:"):
                total += int(line.split()[1])
    return total


# -- supervisord --------------------------------------------------------------------------------
def start_supervisor_install(bench: Bench) -> tuple[str, subprocess.Popen[bytes]]:
    """A throwaway venv with supervisor in the run folder, installed in the background (the
    jobs are installed meanwhile). Nothing fetched goes anywhere else."""
    venv = os.path.join(bench.run_dir, "supervisor-venv")
    script = '"$1" -m venv "$2" && "$2/bin/pip" install -q supervisor && chmod -R a+rX "$2"'
    proc = subprocess.Popen(["/bin/sh", "-c", script, "sh", SYSTEM_PYTHON, venv],
                            env=dict(os.environ),  # pip's settings and proxies
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)  # its own group: ended with pip, if need be
    return venv, proc


def end_install(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()


def supervisor_ready(venv: str, proc: subprocess.Popen[bytes]) -> Optional[str]:
    """The venv's supervisord once pip is done, or None when it could not be installed."""
    try:
        out, _ = proc.communicate(timeout=PIP_TIMEOUT)
    except subprocess.TimeoutExpired:
        end_install(proc)
        print(f"supervisor: pip ran longer than {PIP_TIMEOUT:g} s", file=sys.stderr)
        return None
    supervisord = os.path.join(venv, "bin", "supervisord")
    if proc.returncode != 0 or not os.access(supervisord, os.X_OK):
        tail = out.decode(errors="replace").strip().splitlines()[-3:]
        print(f"supervisor not installable: {' / '.join(tail)}", file=sys.stderr)
        return None
    return supervisord


@dataclass
class Supervisord:
    """One supervisord of the bench user with `programs` sleepers, as `supervisord -n -c CONF`."""

    bench: Bench
    folder: str
    programs: int
    proc: Optional[subprocess.Popen[bytes]] = None
    programs_left: list[int] = field(default_factory=list)

    def config(self) -> str:
        # echo_supervisord_conf's shape: a unix socket for supervisorctl, logs of each program.
        lines = ["[supervisord]", "nodaemon=true", f"logfile={self.folder}/supervisord.log",
                 f"pidfile={self.folder}/supervisord.pid", f"childlogdir={self.folder}", "",
                 "[unix_http_server]", f"file={self.folder}/supervisor.sock", "",
                 "[rpcinterface:supervisor]",
                 "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface", ""]
        for i in range(self.programs):
            lines += [f"[program:p{i}]", f"command={' '.join(SLEEPER)}", "autostart=true", "startsecs=1",
                      f"stdout_logfile={self.folder}/p{i}.out.log", f"stderr_logfile={self.folder}/p{i}.err.log", ""]
        path = os.path.join(self.folder, "supervisord.conf")
        with open(path, "w") as f:
            f.write("\n".join(lines))
        os.chown(path, self.bench.user.uid, self.bench.user.gid)
        return path

    def start(self, supervisord: str) -> None:
        self.proc = self.bench.spawn([supervisord, "-n", "-c", self.config()], self.bench.cron_env())

    def sleepers(self) -> list[int]:
        assert self.proc is not None
        return [pid for pid in children_of(self.proc.pid) if cmdline(pid).split(b"\0")[0] == SLEEPER[0].encode()]

    def wait_running(self) -> None:
        assert self.proc is not None
        wait_until(lambda: len(self.sleepers()) == self.programs, 60,
                   f"supervisord's {self.programs} programs to run", 0.05)

    def stop(self) -> None:
        """SIGTERM to supervisord by its PID (it stops its programs); `wait_stopped` waits for it."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.programs_left = self.sleepers()
        self.proc.send_signal(signal.SIGTERM)

    def wait_stopped(self) -> None:
        """SIGKILL to supervisord and its programs, by PID, if it has not stopped in STOP_WAIT."""
        if self.proc is None:
            return
        try:
            self.proc.wait(timeout=STOP_WAIT)
        except subprocess.TimeoutExpired:
            kill_pid(self.proc.pid)
            self.proc.wait()
        for pid in self.programs_left:
            if alive(pid):
                kill_pid(pid)


# -- our jobs -----------------------------------------------------------------------------------
def residents(sc: Scenario) -> list[int]:
    """The scenario's processes that are not a daemon: they name its state folder in their command
    line or environment, or carry the token of one of its jobs."""
    home = sc.state_home.encode()
    tokens = {f"WATCHDOG_SINGLETON_JOB={name}".encode() for name in sc.started}
    found = []
    for pid in user_pids(sc.bench.user.uid):
        argv = cmdline(pid)
        if not alive(pid) or argv.split(b"\0")[0] == SLEEPER[0].encode():
            continue
        env = environ(pid)
        if home in argv or any(home in var for var in env) or tokens & set(env):
            found.append(pid)
    return found


def start_jobs(sc: Scenario, count: int, options: list[str]) -> None:
    for i in range(count):  # scenarios share the lock folder: names tell them apart
        sc.install(sc.job(f"{sc.label}-j{i:03d}"), SLEEPER, "--settle", "0", *options)
    for name in sc.started:
        wait_until(lambda: sc.running_pid(name), 30, f"{name} to run", 0.02)  # noqa: B023 (waited on at once)


# -- the figure ---------------------------------------------------------------------------------
def measure(sides: list[Side], window: float) -> float:
    """Sample every side at the start, middle and end of one window; the wake-ups of each."""
    for side in sides:
        side.sample()
    before = [side.switches() for side in sides]
    start = time.monotonic()
    time.sleep(window / 2)
    for side in sides:
        side.sample()
    time.sleep(max(0.0, start + window - time.monotonic()))
    after = [side.switches() for side in sides]
    took = time.monotonic() - start
    for side, a, b in zip(sides, before, after):
        side.woke = b - a
        side.sample()
    return took


def rows_for(label: str, ours: Side, theirs: Optional[Side], size: int, minutes: float, window: float) -> list[Row]:
    jobs = f"{size} job{'s' if size > 1 else ''} ({label})"
    ref = f"supervisord, {size} program{'s' if size > 1 else ''}"
    if theirs is None:
        return [Row("11", f"{jobs}: resident RSS, USS, wake-ups per minute",
                    f"{fmt_mb(median(ours.rss))}, {fmt_mb(median(ours.uss))}, {ours.woke / minutes:.1f}",
                    ref, "not measured: supervisor not installable")]
    return [
        Row("11", f"{jobs}: resident processes", str(len(ours.pids)), ref, str(len(theirs.pids)), n=1),
        compare("11", f"{jobs}: resident RSS, total", ours.rss, ref, theirs.rss, fmt_mb,
                f"<= {GOALS['RSS']:g}x", at_most=GOALS["RSS"]),
        compare("11", f"{jobs}: resident USS, total", ours.uss, ref, theirs.uss, fmt_mb,
                f"<= {GOALS['USS']:g}x", at_most=GOALS["USS"]),
        # A window shorter than the lock watch's period (--quick) may see none of its wake-ups.
        compare("11", f"{jobs}: idle wake-ups per minute, over {window:g} s", [ours.woke / minutes], ref,
                [theirs.woke / minutes], lambda v: f"{v:.1f}",
                f"<= {GOALS['wake-ups']:g}x" if window >= CHECK_SECONDS else f"report (< {CHECK_SECONDS:g} s)",
                at_most=GOALS["wake-ups"] if window >= CHECK_SECONDS else None),
    ]


def note(what: str, since: float) -> None:
    print(f"[11] {what} at {time.monotonic() - since:.0f} s", file=sys.stderr, flush=True)


def scale_figure(bench: Bench, plan: Plan) -> list[Row]:
    mode = "quick" if plan is QUICK else "full"
    jobs = JOBS[mode]
    sizes = (jobs, 1)
    began = time.monotonic()
    venv, pip = start_supervisor_install(bench)
    scenarios: list[Scenario] = []
    daemons: list[Supervisord] = []
    try:
        ours: dict[tuple[str, int], tuple[Scenario, Side]] = {}
        for index, (label, options) in enumerate(MODES):
            for size in sizes:
                sc = bench.scenario(f"scale{index}-{size}")
                scenarios.append(sc)
                start_jobs(sc, size, options)
                ours[label, size] = sc, Side(f"{size} jobs ({label})")
        supervisord = supervisor_ready(venv, pip)
        theirs: dict[int, Side] = {}
        if supervisord is not None:
            for size in sizes:
                daemon = Supervisord(bench, bench.mkdir(f"supervisord-{size}"), size)
                daemons.append(daemon)
                daemon.start(supervisord)
            for daemon in daemons:
                daemon.wait_running()
                assert daemon.proc is not None
                theirs[daemon.programs] = Side(f"supervisord, {daemon.programs} programs", [daemon.proc.pid])
        note(f"{sum(sizes) * len(MODES)} jobs and supervisord started", began)
        time.sleep(SETTLE)
        for sc, side in ours.values():
            side.pids = residents(sc)
            if not side.pids:
                raise BenchError(f"{side.label}: no resident process found")
        minutes = measure([side for _, side in ours.values()] + list(theirs.values()), WINDOW[mode]) / 60
        note("measured", began)
    finally:
        end_install(pip)
        for daemon in daemons:
            daemon.stop()
        for sc in scenarios:
            sc.cleanup()
        for daemon in daemons:
            daemon.wait_stopped()
        note("cleaned up", began)
    rows = []
    for label, _ in MODES:
        for size in sizes:
            rows += rows_for(label, ours[label, size][1], theirs.get(size), size, minutes, WINDOW[mode])
    return rows


def main(argv: list[str]) -> int:
    args = alone_parser(__doc__.splitlines()[0], f"{JOBS['quick']} jobs, a {WINDOW['quick']:g} s window (CI)"
                        ).parse_args(argv)
    return run_alone(scale_figure, args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
