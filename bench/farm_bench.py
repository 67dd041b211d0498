"""The farm against GNU parallel, the real PyTaskFarmer and a PyTaskFarmer-style loop: 2000 tasks
of `true` over 8 workers, overhead per task side by side; what exactly-once on SQLite costs
against the same farm with its store in memory; correctness when each tool's main process is
SIGKILLed halfway through a list and the tool is started again (tasks lost, tasks completed
twice, restarts that hung); and the farm's peak memory with 10k and 100k tasks in the list
(goal < 100 MiB, flat).

The three goals of issue 19, each printed as a ratio against its peer and against the figure
before that work (TODAY): the fixed cost (a one-task list, start to exit) against GNU parallel's,
the cost per task ((time of N tasks - time of one) / N) against `xargs -P`'s, and the peak
memory with 100k tasks in the list against GNU parallel's (each runs 5 s, then is stopped).

    python3 bench/farm_bench.py [--tasks 2000] [--workers 8] [--reps 3] [--quick]

Installs GNU parallel (Debian package `parallel`) when missing and run as root, and PyTaskFarmer
(PyPI `pytaskfarmer`) into a venv of its own under the temporary folder; a tool that cannot be
had is skipped with a line.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from statistics import median
from typing import Callable, Optional

FARM = [sys.executable, "-m", "watchdog_singleton", "farm"]
# Before issue 19's work, measured the same way: a one-task list 580 ms (GNU parallel 206 ms), a
# task 3x `xargs -P`'s cost, 50 MiB with 100k tasks (GNU parallel 19 MiB).
TODAY = {"fixed": 580 / 206, "per task": 3.0, "memory": 50 / 19}
GOAL = 1.5


def verdict(name: str, ratio: float) -> str:
    """`ratio`x the peer, against the goal and against the ratio before (TODAY)."""
    met = "met" if ratio <= GOAL else "NOT met"
    return (f"{ratio:.2f}x (goal <= {GOAL}x: {met}; it was {TODAY[name]:.2f}x, "
            f"now {ratio / TODAY[name]:.2f}x of that)")


def ensure_parallel() -> bool:
    if shutil.which("parallel"):
        return True
    if os.getuid() == 0 and shutil.which("apt-get"):
        subprocess.run(["apt-get", "install", "-y", "-qq", "parallel"], check=False,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"}, stdout=subprocess.DEVNULL)
    return shutil.which("parallel") is not None


def ensure_pytaskfarmer(base: str) -> Optional[list[str]]:
    """The real PyTaskFarmer 0.1.0's command, installed into a venv of its own; None if it cannot be."""
    venv = os.path.join(base, "ptf-venv")
    script = os.path.join(venv, "bin", "pytaskfarmer.py")
    python = os.path.join(venv, "bin", "python")
    try:
        subprocess.run([sys.executable, "-m", "venv", venv], check=True, capture_output=True, timeout=120)
        subprocess.run([python, "-m", "pip", "install", "-q", "pytaskfarmer"], check=True, capture_output=True,
                       timeout=300)
    except (OSError, subprocess.SubprocessError):
        return None
    return [python, script] if os.path.exists(script) else None


def ptf_loop(tasks: list[str], workers: int) -> None:
    """What PyTaskFarmer's BasicRunner does per task, without its file rewrites: Popen(split), wait."""
    running: list[subprocess.Popen[bytes]] = []
    for line in tasks:
        while len(running) >= workers:
            os.wait()  # any child: then drop the finished ones
            running = [p for p in running if p.poll() is None]
        running.append(subprocess.Popen(line.split()))
    for p in running:
        p.wait()


def kill_halfway(name: str, start: Callable[[str], subprocess.Popen[bytes]], base: str, tasks: int,
                 restart_wait: float) -> tuple[int, int, bool]:
    """Run `tasks` tasks (each appends its number to `out` after a short sleep), SIGKILL the tool's
    main process once half are done, start it again on the same state and let it finish.
    Returns (tasks lost, tasks completed twice or more, whether a restart hung)."""
    work = tempfile.mkdtemp(prefix=f"kill-{name.split()[0]}-", dir=base)
    out = os.path.join(work, "out")
    script = os.path.join(work, "task.sh")
    with open(script, "w") as f:
        f.write(f'sleep 0.05; echo "$1" >> {out}\n')
    with open(os.path.join(work, "tasks.txt"), "w") as f:
        f.writelines(f"sh {script} {i}\n" for i in range(tasks))

    def done() -> list[str]:
        try:
            with open(out) as f:
                return f.read().split()
        except FileNotFoundError:
            return []
    first = start(work)
    deadline = time.monotonic() + 120
    while len(done()) < tasks // 2 and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    first.kill()  # the main process alone, as an OOM kill or a node's scheduler does
    first.wait()
    time.sleep(1.0)  # what it left running finishes (or was taken with it)
    cleanup(first)
    hung = False
    second = start(work)
    try:
        second.wait(restart_wait)
    except subprocess.TimeoutExpired:
        hung = True
    cleanup(second)
    got = done()
    counts = {str(i): 0 for i in range(tasks)}
    for item in got:
        counts[item] = counts.get(item, 0) + 1
    return sum(1 for n in counts.values() if n == 0), sum(1 for n in counts.values() if n > 1), hung


def cleanup(proc: subprocess.Popen[bytes]) -> None:
    """What is left of a tool we started (in a session of its own): its process group, killed."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if proc.poll() is None:
        proc.wait()


def timed(run: Callable[[], None]) -> float:
    began = time.perf_counter()
    run()
    return time.perf_counter() - began


def peak_memory(argv: list[str], stop_after: Optional[float] = None, stdin: Optional[str] = None) -> float:
    """The peak RSS (MiB) of `argv`'s process, SIGTERMed after `stop_after` seconds if given."""
    with open(stdin or os.devnull, "rb") as source:
        proc = subprocess.Popen(argv, stdin=source, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if stop_after is not None:
        try:
            proc.wait(stop_after)
        except subprocess.TimeoutExpired:
            proc.terminate()
    _, _, usage = os.wait4(proc.pid, 0)
    proc.returncode = 0
    return usage.ru_maxrss / 1024


def goals(base: str, workers: str, tasks: int, reps: int, have_parallel: bool, quick: bool) -> None:
    """Issue 19's three goals, each side by side with its peer, commands interleaved."""
    one = os.path.join(base, "one.txt")
    with open(one, "w") as f:
        f.write("true\n")
    many = os.path.join(base, "goal-tasks.txt")
    with open(many, "w") as f:
        f.writelines(f"true {i}\n" for i in range(tasks))
    numbers = os.path.join(base, "numbers.txt")
    with open(numbers, "w") as f:
        f.writelines(f"{i}\n" for i in range(tasks))

    def farm(listing: str) -> Callable[[], None]:
        def go() -> None:
            subprocess.run([*FARM, listing, "--workers", workers, "--workdir", tempfile.mkdtemp(dir=base)],
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return go

    def xargs(listing: str) -> Callable[[], None]:
        def go() -> None:
            with open(listing, "rb") as f:
                subprocess.run(["xargs", "-P", workers, "-n", "1", "true"], stdin=f, check=True)
        return go

    def parallel_one() -> None:
        subprocess.run(["parallel", "--will-cite", "-j", workers, "true", ":::", "1"], check=True,
                       stdout=subprocess.DEVNULL)

    runs: dict[str, Callable[[], None]] = {"farm, one task": farm(one), "farm, N tasks": farm(many),
                                           "xargs -P, one task": xargs(one), "xargs -P, N tasks": xargs(numbers)}
    if have_parallel:
        runs["GNU parallel, one task"] = parallel_one
    times: dict[str, list[float]] = {name: [] for name in runs}
    for run in runs.values():  # a warm-up round: page cache, pyc files
        run()
    for _ in range(reps):
        for name, run in runs.items():
            times[name].append(timed(run))
    ms = {name: median(t) * 1e3 for name, t in times.items()}
    print(f"issue 19's goals ({reps} interleaved runs each, medians):")
    for name, value in ms.items():
        print(f"  {name:<30} {value:8.1f} ms")
    if have_parallel:
        fixed = ms["farm, one task"] / ms["GNU parallel, one task"]
        print(f"  fixed cost, farm / GNU parallel: {verdict('fixed', fixed)}")
    farm_task = (ms["farm, N tasks"] - ms["farm, one task"]) / (tasks - 1)
    xargs_task = (ms["xargs -P, N tasks"] - ms["xargs -P, one task"]) / (tasks - 1)
    print(f"  per task: farm {farm_task:.2f} ms, xargs -P {xargs_task:.2f} ms; "
          f"farm / xargs -P: {verdict('per task', farm_task / xargs_task)}")
    count = 100_000  # each runs 5 s: --quick too
    big = os.path.join(base, f"goal-big-{count}.txt")
    with open(big, "w") as f:
        f.writelines(f"true {i}\n" for i in range(count))
    big_numbers = os.path.join(base, f"goal-big-{count}.numbers")
    with open(big_numbers, "w") as f:
        f.writelines(f"{i}\n" for i in range(count))
    farm_mib: list[float] = []
    parallel_mib: list[float] = []
    for _ in range(1 if quick else 3):
        farm_mib.append(peak_memory([*FARM, big, "--workers", workers, "--workdir", tempfile.mkdtemp(dir=base),
                                     "--timeout", "5", "--grace", "1"]))
        if have_parallel:
            parallel_mib.append(peak_memory(["parallel", "--will-cite", "-j", workers, "true"], stop_after=5.0,
                                            stdin=big_numbers))
    line = f"  memory with {count} tasks: farm {median(farm_mib):.1f} MiB"
    if parallel_mib:
        line += (f", GNU parallel {median(parallel_mib):.1f} MiB; farm / GNU parallel: "
                 f"{verdict('memory', median(farm_mib) / median(parallel_mib))}")
    print(line)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="a short run: fewer tasks, one rep, no 100k list")
    args = parser.parse_args()
    if args.quick:
        args.tasks, args.reps = min(args.tasks, 300), 1
    base = tempfile.mkdtemp(prefix="farm-bench-")
    lines = [f"true {i}" for i in range(args.tasks)]  # distinct lines: distinct tasks
    listing = os.path.join(base, "tasks.txt")
    with open(listing, "w") as f:
        f.write("\n".join(lines) + "\n")
    w = str(args.workers)
    have_parallel = ensure_parallel()
    # The cost per task from at least 1000 tasks (--quick too): fewer leave it in the noise.
    goals(base, w, max(args.tasks, 1000), 5 if args.quick else max(args.reps, 7), have_parallel, args.quick)

    def farm(db: list[str]) -> Callable[[], None]:
        def go() -> None:
            work = tempfile.mkdtemp(dir=base)
            subprocess.run([*FARM, listing, "--workers", w, "--workdir", work, *db], check=True,
                           stderr=subprocess.DEVNULL)
        return go

    runs: dict[str, Callable[[], None]] = {
        "farm (SQLite, exactly once)": farm([]),
        "farm (store in memory)": farm(["--db", "sqlite://:memory:"]),
        "PyTaskFarmer-style loop": lambda: ptf_loop(lines, args.workers),
    }
    if have_parallel:
        def gnu_parallel() -> None:
            subprocess.run(["parallel", "--will-cite", "-j", w], input="\n".join(lines), text=True, check=True,
                           stdout=subprocess.DEVNULL)
        runs["GNU parallel"] = gnu_parallel
    else:
        print("GNU parallel is not installed (apt-get install parallel): skipped")
    ptf = ensure_pytaskfarmer(base)
    if ptf is not None:
        ptf_cmd = ptf

        def pytaskfarmer() -> None:
            work = tempfile.mkdtemp(dir=base)
            subprocess.run([*ptf_cmd, "--proc", w, "--workdir", work, listing], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=600)
        runs["PyTaskFarmer 0.1.0"] = pytaskfarmer
    else:
        print("PyTaskFarmer could not be installed (pip install pytaskfarmer): skipped")
    results: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.reps):  # alternate, so drift in machine load hits every contender alike
        for name, run in runs.items():
            results[name].append(timed(run))
    print(f"{args.tasks} tasks of `true`, {args.workers} workers, median of {args.reps} "
          f"({os.cpu_count()} CPUs)")
    per_task = {name: median(times) / args.tasks * 1e3 for name, times in results.items()}
    for name, ms in per_task.items():
        print(f"  {name:<30} {median(results[name]):7.2f} s  {ms:6.2f} ms/task")
    if "GNU parallel" in per_task:
        ratio = per_task["farm (SQLite, exactly once)"] / per_task["GNU parallel"]
        print(f"  farm / GNU parallel per task: {ratio:.2f}x (goal <= 1.5x)")
    if "PyTaskFarmer 0.1.0" in per_task:
        ratio = per_task["farm (SQLite, exactly once)"] / per_task["PyTaskFarmer 0.1.0"]
        print(f"  farm / PyTaskFarmer per task: {ratio:.2f}x")
    cost = per_task["farm (SQLite, exactly once)"] - per_task["farm (store in memory)"]
    print(f"  exactly once on SQLite costs {cost:+.2f} ms/task against the store in memory")

    kill_tasks = 200 if args.quick else 1000
    kill_reps = 1 if args.quick else 3
    restart_wait = 30.0 if args.quick else 300.0

    def new_session(argv: list[str], cwd: str, stdin: Optional[int] = None) -> subprocess.Popen[bytes]:
        return subprocess.Popen(argv, cwd=cwd, stdin=stdin, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
    starters: dict[str, Callable[[str], subprocess.Popen[bytes]]] = {
        "farm": lambda work: new_session([*FARM, "tasks.txt", "--workers", w, "--lease", "2"], work)}
    if have_parallel:
        def parallel_start(work: str) -> subprocess.Popen[bytes]:
            with open(os.path.join(work, "tasks.txt"), "rb") as f:
                return new_session(["parallel", "--will-cite", "-j", w, "--joblog", "joblog", "--resume"], work,
                                   stdin=f.fileno())
        starters["GNU parallel --resume"] = parallel_start
    if ptf is not None:
        def ptf_start(work: str) -> subprocess.Popen[bytes]:
            os.makedirs(os.path.join(work, "state"), exist_ok=True)  # it must exist
            return new_session([*ptf_cmd, "--proc", w, "--workdir", "state", "tasks.txt"], work)
        starters["PyTaskFarmer 0.1.0"] = ptf_start
    print(f"main process SIGKILLed halfway through {kill_tasks} tasks, then started again "
          f"({kill_reps} tries each; tasks lost / completed twice / restarts that hung):")
    for name, start in starters.items():
        results_k = [kill_halfway(name, start, base, kill_tasks, restart_wait) for _ in range(kill_reps)]
        lost = [r[0] for r in results_k]
        twice = [r[1] for r in results_k]
        hung = sum(1 for r in results_k if r[2])
        print(f"  {name:<30} lost {'/'.join(map(str, lost)):<10} twice {'/'.join(map(str, twice)):<10} "
              f"hung {hung}/{kill_reps}")

    print("peak memory of the farm (lists stay in the database; it runs 5 s then stops, exit 75):")
    for count in (10_000,) if args.quick else (10_000, 100_000):
        big = os.path.join(base, f"big-{count}.txt")
        with open(big, "w") as f:
            f.writelines(f"true {i}\n" for i in range(count))
        proc = subprocess.Popen([*FARM, big, "--workers", w, "--timeout", "5", "--grace", "1"],
                                stderr=subprocess.DEVNULL)
        _, _, usage = os.wait4(proc.pid, 0)
        proc.returncode = 0
        print(f"  {count:>7} tasks: {usage.ru_maxrss / 1024:6.1f} MiB (goal < 100 MiB)")
    shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
