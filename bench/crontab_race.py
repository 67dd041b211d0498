"""Crontab race: how many hand edits our crontab writes overwrite.

    python bench/crontab_race.py [--runs 3] [--commands 20] [--python /venv/bin/python]

As root; everything runs as the unprivileged user `wsrace` (its crontab is this script's alone).
A loop appends unique comment lines, `{ crontab -l; echo '# hand N'; } | crontab -`, as fast as
it can, while our commands run: COMMANDS installs (--no-start) at once, then as many uninstalls
at once. crontab(1) has no compare-and-swap, so a hand write that lands between our last read
and our write is lost. The hand loop is serial, so only our writes can remove a hand line: the
hand lines missing at the end are the hand edits our writes overwrote. The hand loop has its own
read-modify-write window; our edits it undid are counted apart ("ours lost").
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "tests", "kits"))
from userkit import UnprivilegedUser, unprivileged_user  # noqa: E402  (tests/kits shares it)

RACE_USER = "wsrace"
TAG = "#watchdog-singleton:"


class Race:
    def __init__(self, user: UnprivilegedUser, python: str) -> None:
        self.user, self.python = user, python
        self.dir = tempfile.mkdtemp(prefix="ws-race-", dir=user.home)
        os.chown(self.dir, user.uid, user.gid)
        self.env = {"HOME": user.home, "USER": user.name, "LOGNAME": user.name, "PATH": "/usr/bin:/bin",
                    "XDG_STATE_HOME": os.path.join(self.dir, "state"), "LANG": "C.UTF-8",
                    "WATCHDOG_SINGLETON_LOCK_DIR": os.path.join(self.dir, "locks")}

    def crontab(self) -> bytes:
        proc = subprocess.run(["crontab", "-u", self.user.name, "-l"], capture_output=True)
        return proc.stdout if proc.returncode == 0 else b""

    def as_user(self, argv: list[str]) -> "subprocess.Popen[bytes]":
        return subprocess.Popen(argv, env=self.env, cwd=self.dir, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, **self.user.popen_kwargs())

    def hand_loop(self, stop: threading.Event, written: list[int]) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            self.as_user(["/bin/sh", "-c", f"{{ crontab -l 2>/dev/null; echo '# hand {n}'; }} | crontab -"]).wait()
            written.append(n)

    def ours(self, verb: str, names: list[str]) -> int:
        """Run `verb` for every name at once; return how many failed."""
        extra = ["--no-start", "--", "/bin/sleep", "1000"] if verb == "install" else []
        procs = [self.as_user([self.python, "-m", "watchdog_singleton", verb, n, *extra]) for n in names]
        return sum(p.wait() != 0 for p in procs)

    def run(self, commands: int) -> dict[str, float]:
        subprocess.run(["crontab", "-u", self.user.name, "-r"], capture_output=True)
        names = [f"race{i}" for i in range(commands)]
        stop, written = threading.Event(), []  # type: ignore[var-annotated]
        loop = threading.Thread(target=self.hand_loop, args=(stop, written))
        loop.start()
        time.sleep(0.2)  # the loop runs before our first command
        failed = self.ours("install", names)
        text = self.crontab()
        ours_lost = sum(f"{TAG}{n}\n".encode() not in text for n in names)
        failed += self.ours("uninstall", names)
        time.sleep(0.2)
        stop.set()
        loop.join()
        text = self.crontab()
        ours_lost += sum(f"{TAG}{n}\n".encode() in text for n in names)  # an uninstall undone
        lines = set(text.splitlines())
        lost = sum(f"# hand {n}".encode() not in lines for n in written)
        return {"hand": len(written), "lost": lost, "pct": 100.0 * lost / max(1, len(written)),
                "ours_lost": ours_lost, "failed": failed}

    def close(self) -> None:
        subprocess.run(["crontab", "-u", self.user.name, "-r"], capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--commands", type=int, default=20)
    p.add_argument("--python", default=sys.executable, help="the interpreter watchdog_singleton is installed in")
    args = p.parse_args(argv)
    if os.getuid() != 0:
        print("crontab_race: run as root (it acts as the unprivileged user wsrace)", file=sys.stderr)
        return 2
    race = Race(unprivileged_user(RACE_USER), args.python)
    try:
        results = []
        for i in range(args.runs):
            r = race.run(args.commands)
            results.append(r)
            print(f"run {i + 1}: {r['hand']} hand edits, {r['lost']} overwritten by ours ({r['pct']:.1f}%), "
                  f"{r['ours_lost']} of our edits undone by the hand loop, {r['failed']} of our commands failed")
        pct = statistics.median(r["pct"] for r in results)
        lost = statistics.median(r["lost"] for r in results)
        print(f"median: {pct:.1f}% of hand edits overwritten ({lost:g} per {2 * args.commands} of our commands)")
    finally:
        race.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
