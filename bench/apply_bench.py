"""apply of a 100-job file against the same file already applied: python bench/apply_bench.py [--quick]

The no-op apply is what a config-management run or a cron'd `apply` costs on every pass, so it
must stay cheap: it reads the crontab once, writes nothing, and starts or stops nothing. The
goal: under 1 s for 100 jobs. Reference: `status --json` of the same 100 jobs, which reads as
much (every definition, the crontab) and changes nothing either. Run it as root (it acts as the
unprivileged bench user, `wsbench` unless --user says otherwise); `apply_noop` has the shape of a
bench/figures.py figure, so run.py can list it too.
"""

from __future__ import annotations

import os
import sys

from figures import QUICK, Plan, alone_parser, expect, judge, run_alone, walls
from harness import Bench, BenchError, Row, Scenario, alternate, compare, fmt_time, median

JOBS = 100
GOAL_SECONDS = 1.0


def jobs_file(sc: Scenario, count: int) -> str:
    """`count` lean sleepers (lean: 100 resident supervisors would weigh on a small machine, and
    what apply compares does not depend on the kind), two of every ten
    disabled (`enable = false`), as a file the bench user owns."""
    lines = ["[defaults]", "lean = true", "settle = 0", f'schedule = "{sc.bench.schedule}"', ""]
    for i in range(count):
        lines += [f'[jobs.{sc.job(f"d{i:03d}")}]', f'command = ["/bin/sleep", "1000000", "{i}"]',
                  "grace = 2" if i % 3 else "", "enable = false" if i % 10 in (3, 7) else "", ""]
    path = sc.path("jobs.toml")
    with open(path, "w") as f:
        f.write("\n".join(lines))
    os.chown(path, sc.bench.user.uid, sc.bench.user.gid)
    return path


def daemon_pids(sc: Scenario) -> dict[str, int]:
    return {info["name"]: info["pid"] for info in sc.status() if info["running"]}


def apply_noop(bench: Bench, plan: Plan) -> list[Row]:
    """A timed `apply FILE` whose every job is unchanged, against `status --json` of the same jobs."""
    sc = bench.scenario("apply")
    reps = 3 if plan is QUICK else 10
    try:
        path = jobs_file(sc, JOBS)
        sc.started += [sc.job(f"d{i:03d}") for i in range(JOBS)]
        sc.ok("apply", path)
        pids, crontab = daemon_pids(sc), bench.crontab()
        if len(pids) != JOBS - JOBS // 5:
            raise BenchError(f"after the first apply {len(pids)} of {JOBS - JOBS // 5} enabled jobs run")
        runs = alternate({"apply": lambda: sc.ws("apply", path), "status": lambda: sc.ws("status", "--json")}, reps)
        expect(runs["apply"], 0, "apply of the applied file")
        for sample in runs["apply"]:
            if f"{JOBS} unchanged" not in sample.output.decode():
                raise BenchError(f"the no-op apply planned changes: {sample.output.decode()[-300:]}")
        if daemon_pids(sc) != pids:
            raise BenchError("the no-op apply restarted, started or stopped a daemon")
        if bench.crontab() != crontab:
            raise BenchError("the no-op apply changed the crontab")
        row = compare("9", f"apply of a {JOBS}-job file already applied", walls(runs["apply"]),
                      f"status --json, {JOBS} jobs", walls(runs["status"]), fmt_time)
        return [judge(row, median(walls(runs["apply"])) < GOAL_SECONDS, f"< {GOAL_SECONDS:g} s, 0 restarted")]
    finally:
        sc.discard()


def main(argv: list[str]) -> int:
    args = alone_parser(__doc__.splitlines()[0], "few repeats: proves it works (CI)").parse_args(argv)
    return run_alone(apply_noop, args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
