"""The benchmark of issue 4: python bench/run.py [--quick] [--only 1,3] [--python PYTHON]

Measures, side by side in one run, what watchdog-singleton costs against flock(1), a bare
interpreter and writing straight to a file, and prints one table of raw medians and ratios.
Run it as root: every command that touches a crontab then runs as the unprivileged user
`wsbench` (created if missing), never as root. Goals are judged in the table but never decide
the exit code: it is 0 whenever every figure was measured, 1 when one could not be.
See docs/benchmarks.md for what each figure means.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import traceback

import harness
from apply_bench import apply_noop
from cluster_bench import cluster_figure
from figures import FIGURES, FULL, QUICK
from harness import Bench, BenchError, Row
from scale_bench import scale_figure

FIGURES["9"] = ("apply of a 100-job file already applied", apply_noop)
FIGURES["10"] = ("cluster jobs: standby ticks, takeover, renew load", cluster_figure)
FIGURES["11"] = ("many jobs of one user against one supervisord", scale_figure)

COLUMNS = ("#", "measure", "ours", "reference", "ref", "ratio", "goal", "result", "n")


def machine() -> list[str]:
    """The facts docs/benchmarks.md asks for: nproc, CPU model, memory, kernel, python."""
    model = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_kib = int(next(line for line in f if line.startswith("MemTotal")).split()[1])
    return [f"nproc {len(os.sched_getaffinity(0))}, {model}, {mem_kib / 1024 / 1024:.1f} GiB RAM",
            f"kernel {platform.release()}, python {platform.python_version()} ({sys.executable})"]


def cells(row: Row) -> tuple[str, ...]:
    ratio = f"{row.ratio:.2f}x" if row.ratio is not None else ""
    return (row.fig, row.what, row.ours, row.ref_name, row.ref, ratio, row.goal, row.verdict,
            str(row.n) if row.n else "")


def table(rows: list[Row]) -> str:
    lines = [COLUMNS] + [cells(r) for r in rows]
    widths = [max(len(line[c]) for line in lines) for c in range(len(COLUMNS))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in lines)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="few repeats, small sizes: proves it works (CI)")
    p.add_argument("--only", default=",".join(FIGURES), help="figures to run, e.g. 1,3 (default all)")
    p.add_argument("--python", default=sys.executable,
                   help="interpreter that runs watchdog_singleton as the bench user (default: this one)")
    p.add_argument("--user", default=harness.BENCH_USER, help="the unprivileged user to run as")
    args = p.parse_args(argv)
    harness.BENCH_USER = args.user
    plan = QUICK if args.quick else FULL
    chosen = [f for f in args.only.split(",") if f]
    unknown = [f for f in chosen if f not in FIGURES]
    if unknown:
        p.error(f"no figure {', '.join(unknown)}; there are {', '.join(FIGURES)}")

    began = time.monotonic()
    rows: list[Row] = []
    failed = []
    bench = Bench.start(args.python)
    try:
        print(f"bench user {bench.user.name}, run folder {bench.run_dir}", file=sys.stderr)
        for key in chosen:
            title, measure = FIGURES[key]
            print(f"[{key}] {title} ...", file=sys.stderr, flush=True)
            started = time.monotonic()
            try:
                rows += measure(bench, plan)
            except (BenchError, OSError, ValueError, KeyError) as exc:
                failed.append(key)
                traceback.print_exc()
                rows.append(Row(key, f"{title}: NOT MEASURED ({exc})", "-"))
            print(f"[{key}] done in {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
    finally:
        bench.close()

    mode = "quick" if args.quick else "full"
    print(f"watchdog-singleton benchmark ({mode} run, medians; ratio = ours / reference)")
    for line in machine():
        print(line)
    print()
    print(table(rows))
    print(f"\ntook {time.monotonic() - began:.0f} s" + (f"; not measured: figure {', '.join(failed)}"
                                                       if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
