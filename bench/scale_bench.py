"""Figure 11, many jobs of one user against supervisord (issue 19): python bench/scale_bench.py [--quick]

N jobs of the bench user (50; --quick 10), each the same trivial sleeper, against one
supervisord with N programs running the same sleeper; and one job against one program. All
setups run at once and are measured over the same window, so the machine's noise hits
both sides alike. For each side: the resident processes (ours: every process of the jobs
that is not a daemon: the supervisors, houses and watchers; theirs: supervisord itself), their total RSS,
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
The cluster modes (`--cluster URL`, per job and `--shared`: one cluster house) run on a throwaway
PostgreSQL (figure 10's PgServer, stopped at the end whatever happens); their residents include
the watchers (one per job, one above the house), and their rows compare them with as many plain
jobs: per-job, the default, is the goal's reference (issue 19: a cluster job at most 1.5x a plain
one, RSS and USS), shared is reported. The per-job cluster mode runs in the full run only.
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

from cluster_bench import PgServer
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


@dataclass(frozen=True)
class Mode:
    """One way of running our jobs: a label and the extra `install` options of every job; a
    cluster mode's jobs also get `--cluster URL`, on the throwaway PostgreSQL the figure starts."""

    label: str
    options: tuple[str, ...] = ()
    cluster: bool = False
    quick: bool = True  # also in --quick (CI); False: the full run only


PER_JOB = Mode("per-job supervisors")
SHARED = Mode("one shared supervisor", ("--shared",))
# The ways of running our jobs this figure compares: the plain ones with supervisord, the cluster
# ones with the plain ones (issue 19: a cluster job at most 1.5x a plain one in the default mode).
# One more mode is one more line here.
MODES: list[Mode] = [
    PER_JOB,
    SHARED,
    Mode("per-job cluster supervisors", cluster=True, quick=False),  # 2 interpreters a job, psycopg in one
    Mode("shared cluster house", ("--shared",), cluster=True),
]
WATCHER = b"watchdog_singleton.cluster.watcher"  # in the command line of every watcher (cluster/watcher.py)
JOBS = {"full": 50, "quick": 10}
WINDOW = {"full": 180.0, "quick": 10.0}  # full: 3 whole periods of a 60 s lock watch
SETTLE = 2.0  # after the last start, before the window: start-up chores are over
GOALS = {"RSS": 3.0, "USS": 2.0, "wake-ups": 1.0}
CLUSTER_GOAL = 1.5  # RSS and USS of N cluster jobs against N plain per-job jobs
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
    watchers: int = 0  # of `pids`: a cluster job's watchers (cluster/watcher.py)

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


def watchers(pids: list[int]) -> int:
    return sum(WATCHER in cmdline(pid) for pid in pids)


def start_database(bench: Bench, connections: int) -> tuple[Optional[PgServer], str]:
    """The cluster modes' PostgreSQL (figure 10's), or None and why not: those rows say it."""
    pg = None
    try:
        pg = PgServer(bench)
        pg.start(max_connections=connections)
        return pg, ""
    except (BenchError, OSError, subprocess.SubprocessError) as exc:
        if pg is not None:
            pg.close()
        print(f"no PostgreSQL for the cluster modes: {exc}", file=sys.stderr)
        return None, f"not measured: no PostgreSQL ({str(exc)[:80]})"


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


def cluster_rows(mode: Mode, size: int, ours: Side, plain: Side, shared: Side, minutes: float,
                 window: float) -> list[Row]:
    """A cluster mode against as many plain jobs: per-job (the goal's reference: what a cluster job
    costs over a plain one in the default mode) and shared (reported)."""
    s = "s" if size > 1 else ""
    jobs = f"{size} cluster job{s} ({mode.label})"
    per_job, goal = f"{size} plain job{s}, per-job", f"<= {CLUSTER_GOAL:g}x"
    rows = [
        Row("11", f"{jobs}: resident processes (watchers)", f"{len(ours.pids)} ({ours.watchers})", per_job,
            str(len(plain.pids)), n=1),
        compare("11", f"{jobs}: resident RSS, total", ours.rss, per_job, plain.rss, fmt_mb, goal,
                at_most=CLUSTER_GOAL),
        compare("11", f"{jobs}: resident USS, total", ours.uss, per_job, plain.uss, fmt_mb, goal,
                at_most=CLUSTER_GOAL),
        compare("11", f"{jobs}: idle wake-ups per minute, over {window:g} s", [ours.woke / minutes], per_job,
                [plain.woke / minutes], lambda v: f"{v:.1f}", "report"),
    ]
    if size > 1:
        ref = f"{size} plain jobs, shared"
        rows += [compare("11", f"{jobs}: resident RSS, total", ours.rss, ref, shared.rss, fmt_mb, "report"),
                 compare("11", f"{jobs}: resident USS, total", ours.uss, ref, shared.uss, fmt_mb, "report")]
    return rows


def note(what: str, since: float) -> None:
    print(f"[11] {what} at {time.monotonic() - since:.0f} s", file=sys.stderr, flush=True)


@dataclass
class Setups:
    """What the figure started: `close` ends all of it, also after a failure, the database last
    (a cluster job's uninstall releases its lease)."""

    bench: Bench
    pip: subprocess.Popen[bytes]
    scenarios: list[Scenario] = field(default_factory=list)
    daemons: list[Supervisord] = field(default_factory=list)
    pg: Optional[PgServer] = None

    def close(self) -> None:
        try:
            end_install(self.pip)
            for daemon in self.daemons:
                daemon.stop()
            for sc in self.scenarios:
                sc.cleanup()
            for daemon in self.daemons:
                daemon.wait_stopped()
        finally:
            if self.pg is not None:
                self.pg.close()

    def start_supervisord(self, venv: str, sizes: tuple[int, ...]) -> dict[int, Side]:
        supervisord = supervisor_ready(venv, self.pip)
        theirs: dict[int, Side] = {}
        if supervisord is None:
            return theirs
        for size in sizes:
            daemon = Supervisord(self.bench, self.bench.mkdir(f"supervisord-{size}"), size)
            self.daemons.append(daemon)
            daemon.start(supervisord)
        for daemon in self.daemons:
            daemon.wait_running()
            assert daemon.proc is not None
            theirs[daemon.programs] = Side(f"supervisord, {daemon.programs} programs", [daemon.proc.pid])
        return theirs


def find_residents(mode: Mode, size: int, sc: Scenario, side: Side) -> None:
    """The side's processes; a cluster mode's must include its watchers (one per job, or one above
    the house), the tick's process that became one."""
    side.pids = residents(sc)
    side.watchers = watchers(side.pids)
    print(f"[11] {side.label}: {len(side.pids)} resident processes, {side.watchers} watchers", file=sys.stderr)
    if not side.pids:
        raise BenchError(f"{side.label}: no resident process found")
    expected = (1 if "--shared" in mode.options else size) if mode.cluster else 0
    if side.watchers != expected:
        raise BenchError(f"{side.label}: {side.watchers} watchers among its residents, expected {expected}")


def scale_figure(bench: Bench, plan: Plan) -> list[Row]:
    mode = "quick" if plan is QUICK else "full"
    sizes = (JOBS[mode], 1)
    began = time.monotonic()
    venv, pip = start_supervisor_install(bench)
    setups = Setups(bench, pip)
    modes = [m for m in MODES if m.quick or mode == "full"]
    no_cluster = ""
    try:
        if any(m.cluster for m in modes):  # a connection per held job (a house's too), room for the rest
            setups.pg, no_cluster = start_database(bench, sum(sizes) * sum(m.cluster for m in modes) + 20)
            note("PostgreSQL started", began)
        ours: dict[tuple[Mode, int], tuple[Scenario, Side]] = {}
        for index, m in enumerate(modes):
            if m.cluster and setups.pg is None:
                continue
            options = [*m.options, *(["--cluster", setups.pg.url] if m.cluster and setups.pg else [])]
            for size in sizes:
                sc = bench.scenario(f"scale{index}-{size}")
                setups.scenarios.append(sc)
                start_jobs(sc, size, options)
                ours[m, size] = sc, Side(f"{size} job{'s' * (size > 1)} ({m.label})")
            note(f"{m.label} started", began)
        theirs = setups.start_supervisord(venv, sizes)
        note("supervisord started", began)
        time.sleep(SETTLE)
        for (m, size), (sc, side) in ours.items():
            find_residents(m, size, sc, side)
        minutes = measure([side for _, side in ours.values()] + list(theirs.values()), WINDOW[mode]) / 60
        note("measured", began)
    finally:
        setups.close()
        note("cleaned up", began)
    rows = []
    for m in MODES:
        for size in sizes:
            if m.cluster and (m, size) not in ours:
                rows.append(Row("11", f"{size} cluster job{'s' * (size > 1)} ({m.label})", "-",
                                goal="full run only" if m not in modes else no_cluster))
            elif m.cluster:
                rows += cluster_rows(m, size, ours[m, size][1], ours[PER_JOB, size][1], ours[SHARED, size][1],
                                     minutes, WINDOW[mode])
            else:
                rows += rows_for(m.label, ours[m, size][1], theirs.get(size), size, minutes, WINDOW[mode])
    return rows


def main(argv: list[str]) -> int:
    args = alone_parser(__doc__.splitlines()[0], f"{JOBS['quick']} jobs, a {WINDOW['quick']:g} s window (CI)"
                        ).parse_args(argv)
    return run_alone(scale_figure, args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
