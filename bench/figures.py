"""The seven measurements of issue 4, one function each; each returns its rows of the table.

Every daemon here is /bin/sleep unless the figure is about what the daemon does, so what is
measured is our cost, not the daemon's.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

import harness
from harness import (
    Bench,
    BenchError,
    Row,
    Sample,
    Scenario,
    alive,
    alternate,
    children_of,
    cmdline,
    compare,
    cpu_ticks,
    fmt_mb,
    fmt_rate,
    fmt_time,
    kill_pid,
    median,
    private_kib,
    status_field,
    wait_until,
    wakeups,
)
from userkit import is_locked  # found through the path harness sets up

HERE = os.path.dirname(os.path.abspath(__file__))
SYSTEM_PYTHON = "/usr/bin/python3"
SLEEPER = ["/bin/sleep", "1000000"]
PY_SLEEP = "import time; time.sleep(1000)"
# What any Python supervisor needs loaded: spawning, polling, signals, locks, a writer thread, JSON.
SUPERVISOR_FLOOR = "import fcntl, json, selectors, signal, subprocess, threading"
MIB = 1024 * 1024


@dataclass(frozen=True)
class Plan:
    """How much of everything: the full run and the --quick run CI uses to prove the script works."""

    tick_reps: int
    rss_jobs: int
    idle_seconds: float  # how long an idle supervisor is watched for wake-ups (two lock checks: > 120 s)
    chatty_bytes: int
    recovery_reps: int
    log_bytes: int
    log_reps: int
    slow_bytes: int
    scale_points: tuple[int, ...]
    scale_reps: int
    tree_reps: int
    cli_reps: int
    drift_seconds: float  # how long `--every 5` runs for the drift figure
    crowd: int  # other jobs of the user running beside a restarted one (issue 19); 0: that row is skipped


FULL = Plan(tick_reps=40, rss_jobs=3, idle_seconds=130.0, chatty_bytes=50 * MIB, recovery_reps=15, log_bytes=200 * MIB,
            log_reps=5, slow_bytes=32 * MIB, scale_points=(1, 10, 100, 300),
            scale_reps=5, tree_reps=5, cli_reps=10, drift_seconds=600.0, crowd=50)
QUICK = Plan(tick_reps=8, rss_jobs=1, idle_seconds=5.0, chatty_bytes=10 * MIB, recovery_reps=3, log_bytes=20 * MIB,
             log_reps=2, slow_bytes=8 * MIB, scale_points=(1, 10, 30),
             scale_reps=2, tree_reps=2, cli_reps=3, drift_seconds=31.0, crowd=0)


def alone_parser(description: str, quick_help: str) -> argparse.ArgumentParser:
    """The options of a figure run on its own (apply_bench.py, cluster_bench.py)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help=quick_help)
    p.add_argument("--python", default=sys.executable,
                   help="interpreter that runs watchdog_singleton as the bench user (default: this one)")
    p.add_argument("--user", default=harness.BENCH_USER, help="the unprivileged user to run as")
    return p


def run_alone(figure: Callable[[Bench, Plan], list[Row]], args: argparse.Namespace) -> int:
    """Run one figure as its own script: its table and how long it took."""
    harness.BENCH_USER = args.user
    from run import table  # run.py imports this module: only once both are loaded

    began = time.monotonic()
    bench = Bench.start(args.python)
    try:
        rows = figure(bench, QUICK if args.quick else FULL)
    finally:
        bench.close()
    print(table(rows))
    print(f"\ntook {time.monotonic() - began:.0f} s")
    return 0


def judge(row: Row, met: bool, goal: str) -> Row:
    """Judge a row against an absolute goal (the ratio column then is context only)."""
    row.goal, row.verdict = goal, "met" if met else "MISSED"
    return row


def walls(samples: list[Sample]) -> list[float]:
    return [s.wall for s in samples]


def cpus(samples: list[Sample]) -> list[float]:
    return [s.cpu for s in samples]


def expect(samples: list[Sample], code: int, what: str, quiet: bool = False) -> None:
    for s in samples:
        if s.code != code or (quiet and s.output):
            raise BenchError(f"{what} exited {s.code} (expected {code}) printing {s.output[:300]!r}")


# -- 1. tick cost -------------------------------------------------------------------------------
def tick_cost(bench: Bench, plan: Plan) -> list[Row]:
    """The crontab line of a running job, as cron runs it, against flock -n and python -c pass."""
    sc = bench.scenario("tick")
    name, shared = sc.job("tick"), sc.job("shared")
    try:
        sc.install(name, SLEEPER)
        sc.install(shared, SLEEPER, "--shared")
        info = sc.status(name)
        for job in (name, shared):
            if not (sc.status(job)["running"] and sc.status(job)["lock_held"]):
                raise BenchError(f"{job} is not running with its lock held: {sc.status(job)}")
        shared_info = sc.status(shared)
        line = sc.cron_command(name)
        env = bench.cron_env()
        runs = bench.alternate_as_user({
            "tick": ["/bin/sh", "-c", line],
            # A shared job's line also checks, with shell builtins, that its resident lives.
            "shared": ["/bin/sh", "-c", sc.cron_command(shared)],
            "flock": ["flock", "-n", info["lock_path"], "true"],
            "cron-flock": ["/bin/sh", "-c", f"flock -n {shlex.quote(info['lock_path'])} true"],
            "system": [SYSTEM_PYTHON, "-c", "pass"],
            "venv": [bench.python, "-c", "pass"],
        }, env, plan.tick_reps)
        expect(runs["tick"], 0, "the tick", quiet=True)  # cron mails whatever a tick prints
        expect(runs["shared"], 0, "the shared job's tick", quiet=True)
        for key in ("flock", "cron-flock"):
            expect(runs[key], 1, "flock -n on the held lock")
        if sc.status(name)["pid"] != info["pid"] or sc.status(shared)["pid"] != shared_info["pid"]:
            raise BenchError("a tick started a second copy while the first ran")
    finally:
        sc.cleanup()
    tick = runs["tick"]
    rows = []
    for kind, pick in (("wall", walls), ("CPU", cpus)):
        rows += [
            compare("1", f"tick while NAME runs, {kind}", pick(tick), "flock -n FILE true",
                    pick(runs["flock"]), fmt_time, "<= 2x", at_most=2.0),
            # What a hand-written flock line costs under cron, which runs every line through sh.
            compare("1", f"tick while NAME runs, {kind}", pick(tick), "sh -c 'flock -n FILE true'",
                    pick(runs["cron-flock"]), fmt_time),
            compare("1", f"tick while NAME runs, {kind}", pick(tick), f"{SYSTEM_PYTHON} -c pass",
                    pick(runs["system"]), fmt_time, "<= 1.3x", at_most=1.3),
            compare("1", f"tick while NAME runs, {kind}", pick(tick), f"{bench.python_label} -c pass",
                    pick(runs["venv"]), fmt_time, "<= 1.3x", at_most=1.3),
            compare("1", f"tick of a --shared job while it runs, {kind}", pick(runs["shared"]),
                    "sh -c 'flock -n FILE true'", pick(runs["cron-flock"]), fmt_time),
        ]
    return rows


# -- 2. resident footprint ----------------------------------------------------------------------
def sleeping_rss(bench: Bench, argv: list[str], private: bool = False) -> int:
    """VmRSS (or, `private`, USS) in KiB of a process that started and went to sleep, measured
    like the supervisor's."""
    proc = bench.spawn(argv, bench.cron_env())
    try:
        time.sleep(0.5)
        rss = private_kib(proc.pid) if private else status_field(proc.pid, "VmRSS")
        if rss is None:
            raise BenchError(f"{argv[0]} exited before its RSS could be read")
        return rss
    finally:
        for pid in children_of(proc.pid) + [proc.pid]:  # flock's child too
            kill_pid(pid)
        proc.wait()
        bench.reap()


def footprint(bench: Bench, plan: Plan) -> list[Row]:
    """RSS of every process we keep beside the daemon, against a sleeping bare interpreter."""
    sc = bench.scenario("rss")
    try:
        names = [sc.job(f"rss{i}") for i in range(plan.rss_jobs)]
        for name in names:
            sc.install(name, SLEEPER)
        time.sleep(1.0)  # let every supervisor settle into its idle loop
        supervisors = [sc.status(name)["supervisor_pid"] for name in names]
        ours = [status_field(pid, "VmRSS") or 0 for pid in supervisors]
        ours_private = [private_kib(pid) or 0 for pid in supervisors]
        idle_wakes, idle_cpu = idle_supervisor(supervisors[0], plan.idle_seconds)
        per_job = len(sc.resident_ours()) / len(names)
        flock_file = sc.path("flock.lock")
        refs: dict[str, list[int]] = {"system": [], "venv": [], "floor": [], "flock": [], "private": []}
        for _ in range(plan.rss_jobs):
            refs["private"].append(sleeping_rss(bench, [bench.python, "-c", PY_SLEEP], private=True))
            refs["system"].append(sleeping_rss(bench, [SYSTEM_PYTHON, "-c", PY_SLEEP]))
            refs["venv"].append(sleeping_rss(bench, [bench.python, "-c", PY_SLEEP]))
            refs["floor"].append(sleeping_rss(bench, [SYSTEM_PYTHON, "-c", f"{SUPERVISOR_FLOOR}; {PY_SLEEP}"]))
            refs["flock"].append(sleeping_rss(bench, ["flock", flock_file, "/bin/sleep", "1000"]))
        chatty_rss, chatty_peak = chatty_supervisor(bench, sc, plan.chatty_bytes)
        lean_count, lean_rss = lean_resident(sc)
    finally:
        sc.cleanup()
    fmt = fmt_mb
    return [
        Row("2", "processes of ours per supervised daemon", f"{per_job:g}", n=len(names)),
        compare("2", "supervisor RSS, idle daemon", ours, f"sleeping {SYSTEM_PYTHON}", refs["system"],
                fmt, "<= 1.2x", at_most=1.2),
        compare("2", "supervisor RSS, idle daemon", ours, f"sleeping {bench.python_label}", refs["venv"],
                fmt, "<= 1.2x", at_most=1.2),
        compare("2", "supervisor private memory (USS), idle daemon", ours_private,
                f"sleeping {bench.python_label}", refs["private"], fmt, "<= 1.1x", at_most=1.1),
        idle_row(idle_wakes, plan.idle_seconds),
        Row("2", "idle supervisor: CPU per hour", f"{idle_cpu:.2f} s", n=1),
        compare("2", "supervisor RSS, idle daemon", ours, "flock FILE CMD (flock's RSS)",
                refs["flock"], fmt),
        compare("2", "sleeping python + a supervisor's stdlib", refs["floor"], f"sleeping {SYSTEM_PYTHON}",
                refs["system"], fmt),
        compare("2", f"supervisor RSS after {plan.chatty_bytes // MIB} MiB of logs",
                [chatty_rss], f"sleeping {SYSTEM_PYTHON}", refs["system"], fmt, "<= 1.2x", at_most=1.2),
        compare("2", f"supervisor peak RSS (VmHWM) during {plan.chatty_bytes // MIB} MiB",
                [chatty_peak], f"sleeping {SYSTEM_PYTHON}", refs["system"], fmt),
        Row("2", "lean mode: processes of ours, their RSS", f"{lean_count}, {fmt_mb(lean_rss)}",
            goal="0", verdict="met" if lean_count == 0 else "MISSED", n=1),
    ]


def idle_row(woke_at: list[float], seconds: float) -> Row:
    """Wake-ups per minute from the median time between two (so that where the window starts does
    not count); with fewer than two in the window (--quick), only how many there were."""
    what = f"idle supervisor: wake-ups per minute (median gap), over {seconds:g} s"
    gaps = [b - a for a, b in zip(woke_at, woke_at[1:])]
    if not gaps:
        return Row("2", what, f"{len(woke_at)} in {seconds:g} s", goal="<= 1 (needs 2 in the window)", n=1)
    per_minute = 60 / median(gaps)
    return Row("2", what, f"{per_minute:.2f}", goal="<= 1", n=len(gaps),
               verdict="met" if per_minute <= 1.02 else "MISSED")


def idle_supervisor(pid: int, seconds: float) -> tuple[list[float], float]:
    """When the supervisor's main thread woke while nothing happens (sampled every 20 ms), and its
    CPU seconds per hour."""
    ticks_per_second = os.sysconf("SC_CLK_TCK")
    cpu = cpu_ticks(pid)
    seen, woke_at = wakeups(pid), []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.02)
        now = wakeups(pid)
        if now is None or seen is None:
            raise BenchError(f"the idle supervisor {pid} went away")
        if now != seen:
            woke_at.append(time.monotonic())
            seen = now
    cpu_after = cpu_ticks(pid)
    if cpu is None or cpu_after is None:
        raise BenchError(f"the idle supervisor {pid} went away")
    return woke_at, (cpu_after - cpu) / ticks_per_second * 3600 / seconds


def chatty_supervisor(bench: Bench, sc: Scenario, total: int) -> tuple[int, int]:
    """RSS and peak RSS of a supervisor whose daemon wrote `total` bytes, then went quiet."""
    writer = bench.copy_helper(os.path.join(HERE, "log_writer.py"))
    name = sc.job("chatty")
    result = sc.path("chatty.json")
    sc.install(name, [SYSTEM_PYTHON, writer, result, str(total), "65536", "--then-sleep"],
               "--log-max-bytes", "0")
    log = sc.status(name)["stdout_log"]
    wait_until(lambda: os.path.exists(result), 120, "the chatty daemon to finish writing", 0.05)
    sizes = [-1]

    def settled() -> bool:  # not "size == total": output may have been dropped (figure 4)
        sizes.append(os.path.getsize(log) if os.path.exists(log) else 0)
        return sizes[-1] == sizes[-2]

    wait_until(settled, 60, "the chatty daemon's log to stop growing", 0.5)
    supervisor = sc.status(name)["supervisor_pid"]
    return status_field(supervisor, "VmRSS") or 0, status_field(supervisor, "VmHWM") or 0


def lean_resident(sc: Scenario) -> tuple[int, int]:
    """Lean mode: how many processes of ours stay beside the daemon, and their total RSS."""
    name = sc.job("lean")
    sc.install(name, SLEEPER, "--lean")
    time.sleep(0.5)
    info = sc.status(name)
    if not info["running"] or info["supervisor_pid"] is not None:
        raise BenchError(f"lean job {name} is not running on its own: {info}")
    ours = [pid for pid in sc.resident_ours() if pid != info["pid"] and name.encode() in cmdline(pid)]
    return len(ours), sum(status_field(pid, "VmRSS") or 0 for pid in ours)


# -- 3. recovery --------------------------------------------------------------------------------
RAN_FOR = 3.0  # how long the daemon runs before its kill -9 (issue 7: "a daemon that ran 3 s")


def recovery(bench: Bench, plan: Plan) -> list[Row]:
    sc = bench.scenario("recovery")
    try:
        supervised = supervisor_restart(sc, plan.recovery_reps)
        lean_dead, lean_tick = cron_restart(sc, plan.recovery_reps, "--lean")
        never_dead, never_tick = cron_restart(sc, plan.recovery_reps, "--restart", "never")
        crowded = crowded_restart(sc, plan.recovery_reps, plan.crowd) if plan.crowd else []
    finally:
        sc.cleanup()
    shared: list[float] = []
    if plan.crowd:  # after the per-job crowd is gone: the host has as many processes of ours as then
        sh = bench.scenario("recovery-shared")
        try:
            shared = crowded_restart(sh, plan.recovery_reps, plan.crowd, "--shared")
        finally:
            sh.cleanup()
    n = plan.recovery_reps
    return [
        Row("3", f"supervisor restart: kill -9 after {RAN_FOR:g} s -> new copy runs", fmt_time(median(supervised)),
            "max", fmt_time(max(supervised)), goal="< 0.05 s",
            verdict="met" if median(supervised) < 0.05 else "MISSED", n=n),
        *([Row("3", f"same, with {plan.crowd} other jobs of the user running", fmt_time(median(crowded)),
               "max", fmt_time(max(crowded)), goal="< 0.02 s",
               verdict="met" if median(crowded) < 0.02 else "MISSED", n=n)] if crowded else []),
        *([Row("3", f"same, shared mode, with {plan.crowd} other shared jobs", fmt_time(median(shared)),
               "max", fmt_time(max(shared)), goal="< 0.02 s",
               verdict="met" if median(shared) < 0.02 else "MISSED", n=n)] if shared else []),
        Row("3", "lean: kill -9 -> lock free", fmt_time(median(lean_dead)), n=n),
        Row("3", "lean: cron tick -> new copy runs", fmt_time(median(lean_tick)), "+ wait for tick",
            "0-60 s", goal="report", n=n),
        Row("3", "--restart never: kill -9 -> lock free", fmt_time(median(never_dead)), n=n),
        Row("3", "--restart never: cron tick -> new copy runs", fmt_time(median(never_tick)),
            "+ wait for tick", "0-60 s", goal="report", n=n),
    ]


def restarted(sc: Scenario, name: str, old: int) -> Callable[[], Optional[int]]:
    return lambda: sc.running_pid(name, not_pid=old)


def lock_free(path: str) -> Callable[[], bool]:
    return lambda: not is_locked(path)


def supervisor_restart(sc: Scenario, reps: int, base: str = "restart", *options: str) -> list[float]:
    """kill -9 of the daemon until the supervisor's new copy runs, polled from the state file."""
    name = sc.job(base)
    sc.install(name, SLEEPER, *options)
    times = []
    for _ in range(reps):
        old = wait_until(lambda: sc.running_pid(name), 10, f"{name} to run")
        time.sleep(RAN_FOR)
        start = time.perf_counter()
        os.kill(old, signal.SIGKILL)
        wait_until(restarted(sc, name, old), 10, f"{name} to be restarted")
        times.append(time.perf_counter() - start)
    return times


def crowded_restart(sc: Scenario, reps: int, size: int, *options: str) -> list[float]:
    """supervisor_restart with `size` other jobs of the user running: a supervisor and a daemon
    each, or (options `--shared`) all of them and the restarted one in one shared resident."""
    crowd = [sc.job(f"crowd{i}") for i in range(size)]
    for name in crowd:
        sc.install(name, SLEEPER, *options)
    for name in crowd:
        wait_until(lambda: sc.running_pid(name), 30, f"{name} to run")  # noqa: B023 (waited on at once)
    return supervisor_restart(sc, reps, "crowded", *options)


def cron_restart(sc: Scenario, reps: int, *options: str) -> tuple[list[float], list[float]]:
    """kill -9 of the daemon with no supervisor to restart it: time until the lock is free, then
    from firing the crontab line (as cron does at its next tick) until the new copy runs."""
    name = sc.job("lean" if "--lean" in options else "never")
    sc.install(name, SLEEPER, *options)
    dead, tick = [], []
    for _ in range(reps):
        old = wait_until(lambda: sc.running_pid(name), 10, f"{name} to run")
        lock = sc.state(name)["lock_path"]
        start = time.perf_counter()
        os.kill(old, signal.SIGKILL)
        wait_until(lock_free(lock), 15, f"{name}'s lock to be free")
        dead.append(time.perf_counter() - start)
        start = time.perf_counter()
        launcher = sc.fire_tick(name)
        wait_until(restarted(sc, name, old), 15, f"the tick to start {name}")
        tick.append(time.perf_counter() - start)
        launcher.wait(timeout=15)  # the tick returns once the daemon runs; then only the daemon holds the lock
        sc.bench.reap()
    return dead, tick


# -- 4. log throughput --------------------------------------------------------------------------
def log_throughput(bench: Bench, plan: Plan) -> list[Row]:
    """A daemon writing flat out through our log handling, against writing straight to a file."""
    sc = bench.scenario("log")
    writer = bench.copy_helper(os.path.join(HERE, "log_writer.py"))
    rows: list[Row] = []
    try:
        for chunk in (65536, 4096):
            rows += fast_log(bench, sc, writer, chunk, plan)
        rows += slow_log(bench, sc, writer, plan)
    finally:
        sc.cleanup()
    return rows


def writer_argv(writer: str, result: str, total: int, chunk: int) -> list[str]:
    return [SYSTEM_PYTHON, writer, result, str(total), str(chunk)]


def foreground_run(bench: Bench, sc: Scenario, name: str) -> list[str]:
    """The launcher cron runs, minus --cron: the same supervisor, but in the foreground, so the
    run ends when the daemon has exited and its output is in the log (and wait4 sees its CPU)."""
    return [bench.python, "-m", "watchdog_singleton", "run", "--state-dir", sc.state_root, name]


def read_result(path: str) -> dict[str, Any]:
    with open(path) as f:
        data: dict[str, Any] = json.load(f)
    os.unlink(path)
    return data


def fast_log(bench: Bench, sc: Scenario, writer: str, chunk: int, plan: Plan) -> list[Row]:
    """The same writer through our supervisor, straight to a file, and through a bare pipe relay."""
    total = plan.log_bytes
    name = sc.job(f"log{chunk // 1024}k")
    result = sc.path(f"{name}.json")
    # No rotation, so the log's size proves every byte arrived; one run, then the supervisor exits.
    sc.install(name, writer_argv(writer, result, total, chunk), "--restart", "never",
               "--log-max-bytes", "0", start=False)
    log = sc.status(name)["stdout_log"]
    out = sc.path(f"{name}.out")
    produce = shlex.join(writer_argv(writer, result, total, chunk))
    relay = shlex.join([SYSTEM_PYTHON, bench.copy_helper(os.path.join(HERE, "pipe_relay.py")), out])
    records: dict[str, list[dict[str, Any]]] = {"ours": [], "direct": [], "relay": []}

    def measured(key: str, argv: list[str], target: str) -> Callable[[], Sample]:
        def run() -> Sample:
            remove(target)
            sample = bench.timed(argv, bench.cron_env())
            if sample.code != 0 or not os.path.exists(target):
                raise BenchError(f"{name} ({key}) exited {sample.code}: {sample.output[-300:]!r}")
            record = read_result(result)
            record["lost"] = total - payload_bytes(target)
            records[key].append(record)
            remove(target)
            return sample
        return run

    runs = alternate({
        "ours": measured("ours", foreground_run(bench, sc, name), log),
        "direct": measured("direct", ["/bin/sh", "-c", f"exec {produce} >> {shlex.quote(out)}"], out),
        "relay": measured("relay", ["/bin/sh", "-c", f"{produce} | {relay}"], out),
    }, plan.log_reps)
    kept = {key: rs[-plan.log_reps:] for key, rs in records.items()}  # not the warm-up run
    # Bytes that reached the log per second of the daemon's writing: dropped output is no throughput.
    rate = {key: [(total - r["lost"]) / r["elapsed"] for r in rs] for key, rs in kept.items()}
    worst = {key: [r["worst_write"] for r in rs] for key, rs in kept.items()}
    lost = [r["lost"] for r in kept["ours"]]
    size = f"{chunk // 1024} KiB lines"
    return [
        compare("4", f"daemon write rate, {size}", rate["ours"], "straight to a file", rate["direct"],
                fmt_rate, ">= 0.9x", at_least=0.9),
        compare("4", f"bare pipe relay's rate, {size}", rate["relay"], "straight to a file", rate["direct"],
                fmt_rate),
        judge(Row("4", f"output lost on a healthy disk, {size}", f"{median(lost) / MIB:.1f} MiB",
                  "worst run", f"{max(lost) / MIB:.1f} MiB", n=len(lost)), max(lost) == 0, "0"),
        compare("4", f"CPU of daemon + ours, {size}", cpus(runs["ours"]), "daemon + sh, to a file",
                cpus(runs["direct"]), fmt_time),
        compare("4", f"run -> all {total // MIB} MiB in the log, {size}", walls(runs["ours"]),
                "sh + daemon, to a file", walls(runs["direct"]), fmt_time),
        compare("4", f"longest single write(), {size}", worst["ours"], "straight to a file",
                worst["direct"], fmt_time),
    ]


MARKER = re.compile(rb"\n?\[watchdog-singleton [^\]\n]*\] [^\n]*\n")


def payload_bytes(log: str) -> int:
    """The daemon's bytes in `log`: its size less our marker lines ("N bytes of output lost")."""
    with open(log, "rb") as f:
        data = f.read()
    return len(data) - sum(len(m) for m in MARKER.findall(data))


def remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


class Staller(threading.Thread):
    """Makes a FUSE file system (bindfs) a slow disk: stopped `stalled` s out of every
    `stalled + running` s, until told to hurry. (A FIFO at the log path would be simpler, but a
    log path that holds a FIFO is refused.)"""

    def __init__(self, fuse: "subprocess.Popen[bytes]", stalled: float = 0.2, running: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.fuse, self.stalled, self.running = fuse, stalled, running
        self.hurry = threading.Event()

    def run(self) -> None:
        while not self.hurry.is_set():
            self.fuse.send_signal(signal.SIGSTOP)
            try:
                self.hurry.wait(self.stalled)
            finally:
                self.fuse.send_signal(signal.SIGCONT)
            self.hurry.wait(self.running)


def slow_log(bench: Bench, sc: Scenario, writer: str, plan: Plan) -> list[Row]:
    """The log is on a disk that stalls 80% of the time: the daemon must not be held back to its pace."""
    total = plan.slow_bytes
    name = sc.job("logslow")
    src, log_dir = bench.mkdir(sc.label, "slow-src"), bench.mkdir(sc.label, "slowlogs")
    fuse = subprocess.Popen(["bindfs", "-f", src, log_dir])
    try:
        wait_until(lambda: os.path.ismount(log_dir), 10, "the bindfs mount")
        result = sc.path(f"{name}.json")
        sc.install(name, writer_argv(writer, result, total, 65536), "--restart", "never", "--log-dir", log_dir,
                   "--log-max-bytes", "0", start=False)
        direct_log = os.path.join(log_dir, "direct.log")
        direct_cmd = "exec " + shlex.join(writer_argv(writer, result, total, 65536)) + " >> " + shlex.quote(direct_log)
        runs = {}
        peak = 0
        for label, argv in (("ours", foreground_run(bench, sc, name)), ("direct", ["/bin/sh", "-c", direct_cmd])):
            staller = Staller(fuse)
            staller.start()
            proc = bench.spawn(argv, bench.cron_env())
            wait_until(lambda: os.path.exists(result), 120, f"the {label} slow writer", 0.01)
            if label == "ours":
                peak = status_field(proc.pid, "VmHWM") or 0  # proc is the supervisor
            staller.hurry.set()
            staller.join(timeout=10)
            proc.wait(timeout=60)
            runs[label] = read_result(result)
        got = payload_bytes(os.path.join(src, f"{name}.stdout.log"))
    finally:
        fuse.send_signal(signal.SIGCONT)
        subprocess.run(["fusermount", "-u", log_dir], capture_output=True)
        fuse.wait(timeout=10)
    ours, direct = runs["ours"], runs["direct"]
    lost = max(0, total - got)
    return [
        compare("4", f"slow log (stalled 80% of the time): daemon's time to write {total // MIB} MiB",
                [ours["elapsed"]], "straight to the slow log", [direct["elapsed"]], fmt_time),
        judge(compare("4", "slow log: longest single write()", [ours["worst_write"]],
                      "straight to the slow log", [direct["worst_write"]], fmt_time),
              # "never block for long": the supervisor holds the pipe back at most
              # BACKPRESSURE_SECONDS (0.5 s) before it drops output instead.
              ours["worst_write"] < 1.0, "< 1 s"),
        Row("4", "slow log: output dropped (marked in the log), supervisor peak RSS",
            f"{lost / MIB:.1f} MiB, {fmt_mb(peak)}", n=1),
    ]


# -- 5. growth with the number of jobs ----------------------------------------------------------
@dataclass
class Growth:
    """At each point N: install of job N and status --json with N jobs, each paired in one loop
    with the same command on one job, so that the noise of the minutes between points cancels."""

    install: dict[int, list[Sample]]
    install_one: dict[int, list[Sample]]
    status: dict[int, list[Sample]]
    status_one: dict[int, list[Sample]]


def scaling(bench: Bench, plan: Plan) -> list[Row]:
    """install of the Nth job and status --json with N jobs running, N in plan.scale_points."""
    sc, one, empty = bench.scenario("scale"), bench.scenario("scale1"), bench.scenario("scale0")
    try:
        grown = grow(sc, one, empty, plan)
    finally:
        for scenario in (sc, one, empty):
            scenario.discard()  # hundreds of daemons and crontab lines must not slow later figures
    rows = []
    for point in plan.scale_points[1:]:
        rows.append(compare("5", f"install of job #{point}", walls(grown.install[point]), "install of job #1",
                            walls(grown.install_one[point]), fmt_time))
    for point in plan.scale_points[1:]:
        limit = 3.0 if point == 100 else None
        rows.append(compare("5", f"status --json, {point} jobs running", walls(grown.status[point]),
                            "1 job running", walls(grown.status_one[point]), fmt_time,
                            "<= 3x" if limit else "", at_most=limit))
    rows += slope_rows("install", grown.install, grown.install_one, plan)
    rows += slope_rows("status --json", grown.status, grown.status_one, plan)
    return rows


def extra_cost(at: dict[int, list[Sample]], one: dict[int, list[Sample]]) -> dict[int, float]:
    """What N jobs add over one: the median of differences paired round by round."""
    return {n: median([a.wall - b.wall for a, b in zip(at[n], one[n])]) for n in at}


def grow(sc: Scenario, one: Scenario, empty: Scenario, plan: Plan) -> Growth:
    """Install lean jobs one by one into `sc`; at each point N measure, interleaved: the install
    of job N in `sc` against a first install in `empty`, and status --json in `sc` against
    status --json in `one`, which has one job.

    The jobs are lean: N running daemons with their locks held, as status sees them in real
    use, without N resident supervisors' memory on a small machine.
    """
    one.install(one.job("solo"), SLEEPER, "--lean")
    grown = Growth({}, {}, {}, {})
    installed = 0
    for point in plan.scale_points:
        while installed < point - 1:  # fill up to N-1 jobs, untimed
            installed += 1
            sc.install(sc.job(f"s{installed:04d}"), SLEEPER, "--lean")
        runs = alternate({
            "install": install_then_remove(sc, sc.job(f"s{point:04d}")),
            "install_one": install_then_remove(empty, empty.job("first")),
        }, plan.scale_reps)
        grown.install[point], grown.install_one[point] = runs["install"], runs["install_one"]
        sc.install(sc.job(f"s{point:04d}"), SLEEPER, "--lean")
        installed = point
        runs = alternate({"status": checked_status(sc, point), "status_one": checked_status(one, 1)},
                         2 * plan.scale_reps)
        grown.status[point], grown.status_one[point] = runs["status"], runs["status_one"]
    return grown


def install_then_remove(sc: Scenario, name: str) -> Callable[[], Sample]:
    """A timed install of `name` (started, lean), then its untimed uninstall."""
    def run() -> Sample:
        sample = sc.install(name, SLEEPER, "--lean")
        sc.ok("uninstall", name)
        return sample
    return run


def checked_status(sc: Scenario, jobs: int) -> Callable[[], Sample]:
    """A timed status --json that must list `jobs` jobs, all running."""
    def run() -> Sample:
        sample = sc.ws("status", "--json")
        infos = json.loads(sample.output) if sample.code == 0 else []
        if len(infos) != jobs or not all(i["running"] for i in infos):
            raise BenchError(f"status --json with {jobs} jobs: exit {sample.code}, "
                             f"{sum(i['running'] for i in infos)} of {len(infos)} running")
        return sample
    return run


def slope_rows(what: str, at: dict[int, list[Sample]], one: dict[int, list[Sample]], plan: Plan) -> list[Row]:
    """Cost per extra job over the last span against the span before: is any step quadratic?

    Linear growth keeps the ratio near 1x, a quadratic term pushes it towards (c+b)/(b+a)
    (3.6x for 10, 100, 300); 1.5x leaves room for noise. Slopes of a few ms are themselves noise:
    a last span that adds less than 10% to the cost is judged linear whatever the ratio says.
    """
    points = plan.scale_points
    if len(points) < 3:
        return []
    a, b, c = points[-3], points[-2], points[-1]
    extra = extra_cost(at, one)
    before = (extra[b] - extra[a]) / (b - a)
    after = (extra[c] - extra[b]) / (c - b)
    ratio = after / before if before > 0 and after > 0 else None
    # On a noisy machine a near-flat slope makes any ratio meaningless, so a marginal cost under
    # 1 ms per job also passes (the quadratic /proc/locks read this caught cost 1.4-2 ms per job).
    small = after < 0.001
    verdict = "met" if small or (ratio is not None and ratio <= 1.5) else "MISSED"
    return [Row("5", f"{what}: cost per extra job, {b}->{c}", fmt_time(after), f"{a}->{b}",
                fmt_time(before), ratio, "<= 1.5x or < 1 ms/job", verdict, len(at[c]))]


# -- 6. uninstall of a 50-process tree ----------------------------------------------------------
TREE_SCRIPT = 'i=1; while [ "$i" -lt 50 ]; do /bin/sleep 1000000 & i=$((i+1)); done; wait'


def tree_of_size(sc: Scenario, name: str, size: int) -> Callable[[], bool]:
    return lambda: len(sc.tree(name)) == size


def uninstall_tree(bench: Bench, plan: Plan) -> list[Row]:
    sc = bench.scenario("tree")
    tree, idle = [], []
    try:
        for rep in range(plan.tree_reps):
            name, quiet = sc.job(f"tree{rep}"), sc.job(f"idle{rep}")
            sc.install(name, ["/bin/sh", "-c", TREE_SCRIPT])
            sc.install(quiet, SLEEPER, start=False)
            wait_until(tree_of_size(sc, name, 50), 30, f"{name}'s 50 processes", 0.02)
            supervisor = sc.state(name)["supervisor_pid"]
            sample = sc.ok("uninstall", name)
            left = sc.tree(name) + ([supervisor] if alive(supervisor) else [])
            if left:
                raise BenchError(f"uninstall {name} left pids {left}")
            sc.started.remove(name)
            tree.append(sample)
            idle.append(sc.ok("uninstall", quiet))
    finally:
        sc.cleanup()
    return [
        judge(compare("6", "uninstall, 50-process tree (wall)", walls(tree), "uninstall, nothing running",
                      walls(idle), fmt_time), median(walls(tree)) < 1.0, "< 1 s"),
        compare("6", "uninstall, 50-process tree (CPU)", cpus(tree), "uninstall, nothing running",
                cpus(idle), fmt_time),
    ]


# -- 7. interactive commands --------------------------------------------------------------------
def interactive(bench: Bench, plan: Plan) -> list[Row]:
    sc = bench.scenario("cli")
    env = bench.cron_env()
    counter = iter(range(10 ** 6))
    try:
        sc.install(sc.job("cli"), SLEEPER)  # status has one running job to show
        pending: list[str] = []

        def install() -> Sample:
            name = sc.job(f"c{next(counter)}")
            pending.append(name)
            return sc.install(name, SLEEPER, start=False)

        def uninstall() -> Sample:
            return sc.ok("uninstall", pending.pop()) if pending else install()

        runs = alternate({
            "status": lambda: sc.ok("status"),
            "install": install,
            "uninstall": uninstall,
            "venv": lambda: bench.timed([bench.python, "-c", "pass"], env),
            "system": lambda: bench.timed([SYSTEM_PYTHON, "-c", "pass"], env),
        }, plan.cli_reps)
    finally:
        sc.cleanup()
    rows = []
    for key, what in (("status", "status (table, 1 job)"), ("install", "install --no-start"),
                      ("uninstall", "uninstall, nothing running")):
        rows.append(compare("7", f"{what}, wall", walls(runs[key]), f"{bench.python_label} -c pass",
                            walls(runs["venv"]), fmt_time, "report"))
        rows.append(compare("7", f"{what}, CPU", cpus(runs[key]), f"{bench.python_label} -c pass",
                            cpus(runs["venv"]), fmt_time, "report"))
    rows.append(compare("7", f"{bench.python_label} -c pass, wall", walls(runs["venv"]), f"{SYSTEM_PYTHON} -c pass",
                        walls(runs["system"]), fmt_time))
    return rows


# -- 8. periodic jobs ---------------------------------------------------------------------------
def periodic(bench: Bench, plan: Plan) -> list[Row]:
    """A periodic job's tick while a run goes, against a keep-alive tick; the lateness of `--every 5`."""
    sc = bench.scenario("periodic")
    try:
        slow, alive = sc.job("slow"), sc.job("alive")
        sc.install(slow, ["/bin/sleep", "1000000"], "--periodic", "--timeout", "3600", start=False)
        sc.install(alive, SLEEPER)
        # A run of the periodic job, started by hand the way cron's tick would start it.
        sc.ok("run", slow, "--detach")
        wait_until(lambda: sc.status(slow)["running"], 10, f"{slow}'s run")
        runs = bench.alternate_as_user({
            "periodic": ["/bin/sh", "-c", sc.cron_command(slow)],
            "alive": ["/bin/sh", "-c", sc.cron_command(alive)],
        }, bench.cron_env(), plan.tick_reps)
        expect(runs["periodic"], 0, "the periodic tick", quiet=True)
        drift = every_drift(sc, plan.drift_seconds)
    finally:
        sc.cleanup()
    return [
        compare("8", "periodic tick while a run goes, wall", walls(runs["periodic"]), "keep-alive tick",
                walls(runs["alive"]), fmt_time, "about 1x", at_most=1.3),
        compare("8", "periodic tick while a run goes, CPU", cpus(runs["periodic"]), "keep-alive tick",
                cpus(runs["alive"]), fmt_time, "about 1x", at_most=1.3),
        Row("8", f"--every 5: median lateness against the due time, over {plan.drift_seconds:g} s",
            fmt_time(median(drift)), "max", fmt_time(max(drift)), goal="< 50 ms",
            verdict="met" if median(drift) < 0.05 else "MISSED", n=len(drift)),
    ]


def every_drift(sc: Scenario, seconds: float) -> list[float]:
    """How late each run of `--every 5` starts against its due time (first start + k * 5 s)."""
    name = sc.job("every")
    starts = sc.path("starts")
    # Not through sc.install: its far-off --schedule would clash with --every.
    sc.ok("install", name, "--every", "5", "--", "/bin/sh", "-c", f"date +%s.%N >> {starts}")
    time.sleep(seconds)
    times = [float(t) for t in open(starts).read().split()]
    if len(times) < 3:
        raise BenchError(f"--every 5 ran {len(times)} times in {seconds:g} s")
    return [t - (times[0] + 5 * k) for k, t in enumerate(times)][1:]


FIGURES: dict[str, tuple[str, Callable[[Bench, Plan], list[Row]]]] = {
    "1": ("tick cost while NAME runs", tick_cost),
    "2": ("resident footprint", footprint),
    "3": ("recovery time", recovery),
    "4": ("log throughput", log_throughput),
    "5": ("growth with the number of jobs", scaling),
    "6": ("uninstall of a 50-process tree", uninstall_tree),
    "7": ("interactive command latency", interactive),
    "8": ("periodic jobs: the tick during a run, scheduling drift", periodic),
}

