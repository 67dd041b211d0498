"""Shared cluster jobs end to end (install --shared --cluster): the real tick, cluster house, its
watcher and PostgreSQL (tests/kits/pgkit.py), as the unprivileged test user. The house's beats
and their arithmetic are pinned in tests/world/test_house_cluster.py; here, the processes."""

from __future__ import annotations

import os
import signal
import time
from typing import TYPE_CHECKING

from conftest import Sandbox, is_zombie, pids_with_arg, wait_for
from sharedkit import residents
from userkit import read_bytes

from watchdog_singleton.cluster import Timing

if TYPE_CHECKING:
    from pgkit import PgCluster

pytest_plugins = ["pgkit"]

LEASE = 6.0  # renew every second, give up 4 s after a renew's send
TIMING = Timing.for_lease(LEASE)
NEVER = "0 0 1 1 *"  # cron does not fire it during a test


def install(box: Sandbox, url: str, base: str, grace: float = 5.0) -> tuple[str, str]:
    """A shared cluster job whose daemon writes its fencing token, then sleeps; (name, marker)."""
    name = box.job(base)
    marker = f"marker-{name}"
    script = (f'echo "$WATCHDOG_SINGLETON_FENCING_TOKEN" > {box.path(name + ".token")}; '
              f'exec /usr/bin/python3 -c "import time; time.sleep(10**6)" {marker}')
    box.ok("install", name, "--shared", "--cluster", url, "--lease", f"{LEASE:g}", "--schedule", NEVER,
           "--grace", f"{grace:g}", "--", "/bin/sh", "-c", script)
    return name, marker


def token(box: Sandbox, name: str) -> str:
    try:
        with open(box.path(name + ".token")) as f:
            return f.read().strip()
    except FileNotFoundError:
        return ""




def parent(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def live(box: Sandbox, marker: str) -> list[int]:
    return [pid for pid in pids_with_arg(marker, box.user.uid) if not is_zombie(pid)]


def two_jobs(box: Sandbox, pg: PgCluster) -> tuple[list[tuple[str, str]], int, int]:
    """Two shared cluster jobs running: the jobs, the cluster house and its watcher."""
    jobs = [install(box, str(pg), base) for base in ("ca", "cb")]
    for name, marker in jobs:
        wait_for(lambda name=name: token(box, name), 15, what=f"{name}'s token")  # type: ignore[misc]
        assert len(live(box, marker)) == 1
    [house] = residents(box)
    watcher = parent(house)
    assert b"watchdog_singleton.cluster.watcher" in read_bytes(f"/proc/{watcher}/cmdline")
    return jobs, house, watcher


def expiries(pg: PgCluster, names: list[str]) -> dict[str, float]:
    """Each lease's expiry on the database's clock (this machine's), in seconds since the epoch."""
    listed = ", ".join(f"'{n}'" for n in names)
    rows = pg.psql(f"SELECT name, extract(epoch FROM expires_at) FROM ws_lease WHERE name IN ({listed})",
                   dbname=pg.dbname)
    return {name: float(when) for name, when in (line.split("|") for line in rows.split())}


def test_two_shared_cluster_jobs_hold_their_leases_in_one_cluster_house(sandbox: Sandbox,
                                                                         pg_cluster: PgCluster) -> None:
    jobs, house, watcher = two_jobs(sandbox, pg_cluster)
    for name, _marker in jobs:
        info = sandbox.status(name)
        assert info["running"] and info["shared"] and info["supervisor_pid"] == house
        assert int(token(sandbox, name)) >= 1
        check = sandbox.ws("lease", "check", name, "--token", token(sandbox, name), "--cluster", str(pg_cluster))
        assert check.returncode == 0, check.stderr
    # kill -9 of one daemon: only it restarts, under the lease it still holds (the same token).
    (victim, victim_marker), (other, other_marker) = jobs
    before, kept = live(sandbox, victim_marker), live(sandbox, other_marker)
    held = token(sandbox, victim)
    os.remove(sandbox.path(victim + ".token"))
    os.kill(before[0], signal.SIGKILL)
    wait_for(lambda: token(sandbox, victim), 15, what="the restarted daemon")
    assert token(sandbox, victim) == held
    assert live(sandbox, victim_marker) not in ([], before)
    assert live(sandbox, other_marker) == kept
    assert residents(sandbox) == [house] and parent(house) == watcher
    # stop of one leaves the other running; uninstall ends the house and its watcher.
    assert "stopped" in sandbox.ok("stop", victim).stdout
    assert live(sandbox, victim_marker) == [] and live(sandbox, other_marker) == kept
    for name, _marker in jobs:
        sandbox.ok("uninstall", name)
    wait_for(lambda: not os.path.exists(f"/proc/{watcher}") or is_zombie(watcher), 15, what="the watcher's exit")


def test_sigstop_of_the_cluster_house_lets_its_watcher_stop_both_trees_before_the_leases_pass(
        sandbox: Sandbox, pg_cluster: PgCluster) -> None:
    jobs, house, watcher = two_jobs(sandbox, pg_cluster)
    os.kill(house, signal.SIGSTOP)
    try:
        time.sleep(0.2)  # a renew in flight lands (or not) before we read the expiries
        expiry = expiries(pg_cluster, [name for name, _ in jobs])
        gone: dict[str, float] = {}

        def both_gone() -> bool:
            for name, marker in jobs:
                if name not in gone and not live(sandbox, marker):
                    gone[name] = time.time()
            return len(gone) == 2
        wait_for(both_gone, LEASE + 5, interval=0.02, what="the watcher to stop both trees")
        for name, _marker in jobs:
            assert gone[name] < expiry[name] - TIMING.attempt, (name, expiry[name] - gone[name])
        assert os.path.exists(f"/proc/{house}"), "the watcher signalled the house"
    finally:
        os.kill(house, signal.SIGCONT)
    for name, _marker in jobs:
        sandbox.ok("uninstall", name)


def test_kill_9_of_the_cluster_house_makes_its_watcher_stop_both_trees(sandbox: Sandbox,
                                                                        pg_cluster: PgCluster) -> None:
    jobs, house, watcher = two_jobs(sandbox, pg_cluster)
    killed = time.monotonic()
    os.kill(house, signal.SIGKILL)
    wait_for(lambda: all(not live(sandbox, marker) for _, marker in jobs), 10, interval=0.02,
             what="the watcher to stop both trees")
    assert time.monotonic() - killed < TIMING.renew_deadline, "the watcher waited for a deadline, not the EOF"
    wait_for(lambda: not os.path.exists(f"/proc/{watcher}") or is_zombie(watcher), 10, what="the watcher's exit")
    for name, _marker in jobs:
        sandbox.ok("uninstall", name)
