"""Times commands from a process that already is the bench user: see Bench.alternate_as_user.

Reads {"commands": {NAME: ARGV}, "env": ENV, "cwd": DIR, "reps": N} on stdin and prints
{NAME: [[wall, cpu, exit code, output], ...]} on stdout, the output decoded as latin-1.
"""

import json
import sys
from typing import Callable

from harness import Sample, alternate, time_process


def runner(argv: list[str], env: dict[str, str], cwd: str) -> Callable[[], Sample]:
    return lambda: time_process(argv, env, cwd)


def main() -> None:
    job = json.load(sys.stdin)
    commands = {name: runner(argv, job["env"], job["cwd"]) for name, argv in job["commands"].items()}
    runs = alternate(commands, job["reps"])
    json.dump({name: [[s.wall, s.cpu, s.code, s.output.decode("latin-1")] for s in samples]
               for name, samples in runs.items()}, sys.stdout)


if __name__ == "__main__":
    main()
