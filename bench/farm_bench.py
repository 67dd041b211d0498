"""The farm against GNU parallel and a PyTaskFarmer-style loop: 2000 tasks of `true` over 8 workers,
overhead per task side by side; what exactly-once on SQLite costs against the same farm with its
store in memory; and the farm's peak memory with 10k and 100k tasks in the list (goal < 100 MiB, flat).

    python3 bench/farm_bench.py [--tasks 2000] [--workers 8] [--reps 3]

Installs GNU parallel (Debian package `parallel`) when missing and run as root.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from statistics import median
from typing import Callable

FARM = [sys.executable, "-m", "watchdog_singleton", "farm"]


def ensure_parallel() -> bool:
    if shutil.which("parallel"):
        return True
    if os.getuid() == 0 and shutil.which("apt-get"):
        subprocess.run(["apt-get", "install", "-y", "-qq", "parallel"], check=False,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"}, stdout=subprocess.DEVNULL)
    return shutil.which("parallel") is not None


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


def timed(run: Callable[[], None]) -> float:
    began = time.perf_counter()
    run()
    return time.perf_counter() - began


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    base = tempfile.mkdtemp(prefix="farm-bench-")
    lines = [f"true {i}" for i in range(args.tasks)]  # distinct lines: distinct tasks
    listing = os.path.join(base, "tasks.txt")
    with open(listing, "w") as f:
        f.write("\n".join(lines) + "\n")
    w = str(args.workers)

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
    if ensure_parallel():
        def gnu_parallel() -> None:
            subprocess.run(["parallel", "--will-cite", "-j", w], input="\n".join(lines), text=True, check=True,
                           stdout=subprocess.DEVNULL)
        runs["GNU parallel"] = gnu_parallel
    else:
        print("GNU parallel is not installed (apt-get install parallel): skipped")
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
    cost = per_task["farm (SQLite, exactly once)"] - per_task["farm (store in memory)"]
    print(f"  exactly once on SQLite costs {cost:+.2f} ms/task against the store in memory")

    print("peak memory of the farm (lists stay in the database; it runs 5 s then stops, exit 75):")
    for count in (10_000, 100_000):
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
