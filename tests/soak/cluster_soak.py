"""A bounded soak of one copy across hosts: python tests/soak/cluster_soak.py [SECONDS (60)] [--hosts 3]

As root. Several hosts on this machine (tests/kits/hostkit.py), each ticking its launcher every
second against a throwaway PostgreSQL (tests/kits/pgkit.py), while random faults hit the holder:
kill -9 of its supervisor and daemon, SIGSTOP of both past the lease then SIGCONT, a partition
from the database, a database restart (`pg_ctl restart -m immediate`). It prints samples, the
faults, the largest number of copies running at once across hosts (must be 1; a SIGSTOPped
holder's daemon after its SIGCONT is excepted, and its guarded writes must all be refused) and
the longest gap with no copy (at most --max-gap). Exit 1 on a violation. Everything it starts is ended by PID and
removed at the end, also after a failure.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sys
import time
from typing import Optional

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [TESTS, os.path.join(TESTS, "kits")]  # conftest's sandbox and the kits

from conftest import make_sandbox  # noqa: E402
from hostkit import Host, Network, Run, TickDriver, end_everything, netns_problem, runs  # noqa: E402
from pgkit import TEST_USER, destroy_cluster, make_cluster  # noqa: E402
from userkit import unprivileged_user  # noqa: E402

from watchdog_singleton.cluster import Timing  # noqa: E402


def running_daemons(net: Network, name: str) -> dict[str, int]:
    """host -> pid of a daemon that runs now (alive and not stopped)."""
    live = {}
    for host in net.hosts:
        state = host.state(name)
        if state is not None and state.pid and state.daemon_alive():
            try:
                with open(f"/proc/{state.pid}/stat") as f:
                    if f.read().rsplit(")", 1)[1].split()[0] in ("T", "t"):
                        continue
            except OSError:
                continue
            live[host.name] = state.pid
    return live


def holder_host(net: Network, name: str) -> Optional[Host]:
    for host in net.hosts:
        state = host.state(name)
        if state is not None and state.pid and state.daemon_alive():
            return host
    return None


def clamped(found: list[Run], stopped_at: dict[int, float]) -> list[Run]:
    """The runs as they ran: a SIGSTOPped holder's run ends when it was stopped (what its daemon
    did after its SIGCONT, until its supervisor stopped it, is the fencing token's to refuse)."""
    return [Run(r.host, r.pid, r.token, r.start, min(r.end, stopped_at.get(r.pid, r.end)), r.ended) for r in found]


def concurrency(found: list[Run]) -> int:
    """The most runs at one moment."""
    events = []
    for run in found:
        events += [(run.start, 1), (run.end, -1)]
    most = now = 0
    for _when, step in sorted(events, key=lambda e: (e[0], e[1])):
        now += step
        most = max(most, now)
    return most


def longest_gap(found: list[Run]) -> float:
    """The longest time with no run, from the first start on."""
    gap = 0.0
    covered = None
    for run in sorted(found, key=lambda r: r.start):
        if covered is not None and run.start > covered:
            gap = max(gap, run.start - covered)
        covered = run.end if covered is None else max(covered, run.end)
    return gap


def soak(seconds: float, host_count: int, lease: float, seed: int, max_gap: float) -> int:
    rng = random.Random(seed)
    timing = Timing.for_lease(lease)
    user = unprivileged_user(TEST_USER)
    pg = make_cluster(user)
    box = make_sandbox(user, "cluster-soak")
    net: Optional[Network] = None
    name = f"soak-{box.tag}"
    faults: list[str] = []
    stopped_at: dict[int, float] = {}  # pid -> when it got SIGSTOP
    pending: list[tuple[float, str, Host]] = []  # (when, undo, host)
    most_sampled = 0
    try:
        net = Network.create(pg, box)
        net.fence(name)
        for i in range(host_count):
            TickDriver(net.add_host(box, f"host{chr(ord('a') + i)}"), name, 1.0)
        t0 = time.monotonic()
        next_fault = t0 + 5
        next_print = t0
        while time.monotonic() - t0 < seconds:
            now = time.monotonic()
            for entry in [p for p in pending if p[0] <= now]:
                pending.remove(entry)
                _when, undo, host = entry
                if undo == "cont":
                    host.signal_tree(name, signal.SIGCONT)
                else:
                    host.heal()
                faults.append(f"{now - t0:6.1f} s  {undo} {host.name}")
            live = running_daemons(net, name)
            most_sampled = max(most_sampled, len([pid for pid in live.values() if pid not in stopped_at]))
            if now >= next_print:
                next_print = now + 5
                running = ", ".join(f"{h} (pid {p})" for h, p in live.items()) or "-"
                print(f"sample {now - t0:6.1f} s  running: {running}", flush=True)
            if now >= next_fault and not pending:
                target = holder_host(net, name)
                if target is not None:
                    fault = rng.choice(["kill -9", "sigstop", "partition", "db restart"])
                    faults.append(f"{now - t0:6.1f} s  {fault} {target.name if fault != 'db restart' else ''}")
                    if fault == "kill -9":
                        target.signal_tree(name, signal.SIGKILL)
                    elif fault == "sigstop":
                        stopped_at.update((pid, time.monotonic()) for pid in target.signal_tree(name, signal.SIGSTOP))
                        pending.append((now + lease + 2, "cont", target))
                    elif fault == "partition":
                        target.partition()
                        pending.append((now + lease + 2, "heal", target))
                    else:
                        pg.restart("immediate")
                next_fault = now + rng.uniform(lease + 4, lease + 8)
            time.sleep(0.2)
        for _when, undo, host in pending:
            if undo == "cont":
                host.signal_tree(name, signal.SIGCONT)
            else:
                host.heal()
        end_everything(net, name)
        found = runs(net.records)
        ran = clamped(found, stopped_at)
        most = concurrency(ran)
        tokens = [run.token for run in found]
        accepted = [token for token, _h, ok in net.fenced_writes(name) if ok]
        problems = []
        if most > 1:
            problems.append(f"{most} copies ran at once across hosts")
        if tokens != sorted(tokens) or len(set(tokens)) != len(tokens):
            problems.append(f"tokens did not strictly increase: {tokens}")
        gap = longest_gap(ran)
        if gap > max_gap:
            problems.append(f"no copy ran for {gap:.1f} s (more than --max-gap {max_gap:g} s)")
        if accepted != sorted(accepted):
            problems.append("a stale holder's guarded write was accepted")
        tracebacks = [p for d in net.drivers for p in d.problems()]
        if tracebacks:
            problems.append(f"a tick printed a traceback or several lines: {tracebacks[0][:300]}")
        print("faults:")
        for line in faults:
            print(f"  {line}")
        print(f"runs: {len(found)} on {len({r.host for r in found})} hosts; tokens {tokens[0] if tokens else '-'}"
              f"..{tokens[-1] if tokens else '-'}; guarded writes {len(accepted)} accepted, "
              f"{len(net.fenced_writes(name)) - len(accepted)} refused")
        print(f"max concurrent copies across hosts: {most} (sampled every 0.2 s: {most_sampled}); "
              f"longest gap with no copy: {gap:.1f} s "
              f"(lease {lease:g} s, give-up {timing.renew_deadline:g} s)")
        for problem in problems:
            print(f"VIOLATION: {problem}")
        print("FAIL" if problems else "PASS")
        return 1 if problems else 0
    finally:
        if net is not None:
            end_everything(net, name)
            net.close()
        destroy_cluster(pg, user)
        box.cleanup()


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("duration", nargs="?", type=float, metavar="SECONDS", help="same as --seconds")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--hosts", type=int, default=3)
    parser.add_argument("--lease", type=float, default=6.0)
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument("--max-gap", type=float, default=None,
                        help="the longest time with no copy allowed (default: lease + 5 s: the lease, a tick, a start)")
    args = parser.parse_args(argv)
    if args.duration is not None:
        args.seconds = args.duration
    for what, value, low, high in (("SECONDS", args.seconds, 1, 86400), ("--hosts", args.hosts, 2, 50),
                                   ("--lease", args.lease, 5, 600)):
        if not low <= value <= high:
            print(f"cluster soak: {what} {value:g} is out of range: {low} to {high}", file=sys.stderr)
            return 2
    problem = netns_problem()
    if problem:
        print(f"cluster soak: {problem}", file=sys.stderr)
        return 2
    print(f"cluster soak: {args.hosts} hosts, {args.seconds:g} s, lease {args.lease:g} s, seed {args.seed}")
    max_gap = args.lease + 5 if args.max_gap is None else args.max_gap
    return soak(args.seconds, args.hosts, args.lease, args.seed, max_gap)


if __name__ == "__main__":
    sys.exit(main())
