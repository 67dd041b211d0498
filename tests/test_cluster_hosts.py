"""One copy across hosts, under faults: several hosts on this machine (tests/hostkit.py: network
and UTS namespaces, a bridge to the real PostgreSQL of tests/pgkit.py), each with a driver that
ticks its launcher every second, as cron would. The daemons record their runs on the machine's
one monotonic clock and make writes guarded by their fencing token.

Must hold: run intervals never overlap across hosts (SIGSTOP excepted, where the stale holder's
guarded write is rejected); tokens strictly increase; takeover within lease + retry (+ a tick);
twenty launchers at once start one copy."""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import TYPE_CHECKING, Iterator

import pytest
from conftest import Sandbox, wait_for
from hostkit import Network, Run, TickDriver, end_everything, netns_problem, overlaps, runs

from watchdog_singleton.leases import Timing

if TYPE_CHECKING:
    from pgkit import PgCluster

pytest_plugins = ["pgkit"]

LEASE = 6.0
TIMING = Timing.for_lease(LEASE)
TICK = 1.0
LAUNCH = 1.5  # a launcher's own start: an interpreter, psycopg, one connection (loaded machine)

_PROBLEM = netns_problem()
pytestmark = pytest.mark.skipif(bool(_PROBLEM), reason=_PROBLEM or "ok")


@pytest.fixture
def net(sandbox: Sandbox, pg_cluster: PgCluster) -> Iterator[Network]:
    network = Network.create(pg_cluster, sandbox)
    try:
        yield network
    finally:
        network.close()


def holder(net: Network, name: str) -> Run:
    live = [run for run in runs(net.records) if not run.ended and any(pid == run.pid for h in net.hosts
                                                                       for pid in h.tree(name))]
    assert len(live) == 1, live
    return live[0]


def host_named(net: Network, name: str):  # type: ignore[no-untyped-def]
    return next(h for h in net.hosts if h.name == name)


def check_history(net: Network, name: str, allow_overlap: bool = False) -> list[Run]:
    found = runs(net.records)
    if not allow_overlap:
        assert overlaps(found) == [], f"two copies at once: {overlaps(found)}"
    tokens = [run.token for run in found]
    assert tokens == sorted(tokens) and len(set(tokens)) == len(tokens), f"tokens went back: {found}"
    accepted = [token for token, _host, ok in net.fenced_writes(name) if ok]
    assert accepted == sorted(accepted), "a stale holder's guarded write was accepted"
    for driver in net.drivers:
        assert driver.problems() == [], driver.problems()
    return found


def started_two_hosts(sandbox: Sandbox, net: Network) -> tuple[str, Run]:
    name = sandbox.job("hosts")
    net.fence(name)
    for label in ("hosta", "hostb"):
        TickDriver(net.add_host(sandbox, label), name, TICK)
    assert wait_for(lambda: runs(net.records), 20), "no host started the daemon"
    assert wait_for(lambda: len(net.fenced_writes(name)) >= 2, 10)
    return name, holder(net, name)


def takeover_after(net: Network, name: str, first: Run, since: float) -> Run:
    def successor() -> list[Run]:
        return [run for run in runs(net.records) if run.token > first.token]
    assert wait_for(successor, LEASE + TIMING.retry + TICK + LAUNCH + 5), "no takeover"
    nxt = successor()[0]
    assert nxt.host != first.host or nxt.start > since
    return nxt


def test_kill_9_of_the_holders_supervisor_and_daemon(sandbox: Sandbox, net: Network) -> None:
    name, first = started_two_hosts(sandbox, net)
    a = host_named(net, first.host)
    driver = next(d for d in net.drivers if d.host is a)
    driver.paused.set()  # the dead host stays dead: the other host must take over
    killed_at = time.monotonic()
    assert a.signal_tree(name, signal.SIGKILL)
    nxt = takeover_after(net, name, first, killed_at)
    assert nxt.host != first.host
    assert nxt.start - killed_at <= LEASE + TICK + LAUNCH + 1, f"takeover took {nxt.start - killed_at:.1f} s"
    end_everything(net, name)
    check_history(net, name)


def test_sigstop_of_the_holders_tree_past_the_lease_then_sigcont(sandbox: Sandbox, net: Network) -> None:
    name, first = started_two_hosts(sandbox, net)
    a = host_named(net, first.host)
    stopped_at = time.monotonic()
    assert a.signal_tree(name, signal.SIGSTOP)
    nxt = takeover_after(net, name, first, stopped_at)
    assert nxt.host != first.host
    assert wait_for(lambda: len([w for w in net.fenced_writes(name) if w[0] == nxt.token]) >= 2, 10)
    # The stale holder's daemon wakes first, believing it holds the lease: its guarded writes are
    # refused by its token. Then its supervisor wakes, finds the lease lost and stops the tree.
    state = a.state(name)
    assert state is not None and state.pid and state.supervisor_pid
    seen = len(net.fenced_writes(name))
    os.kill(state.pid, signal.SIGCONT)
    assert wait_for(lambda: [w for w in net.fenced_writes(name)[seen:] if w[0] == first.token], 10)
    stale = [w for w in net.fenced_writes(name)[seen:] if w[0] == first.token]
    assert stale and not any(ok for _t, _h, ok in stale), f"a stale holder's write was accepted: {stale}"
    os.kill(state.supervisor_pid, signal.SIGCONT)
    assert wait_for(lambda: next(r for r in runs(net.records) if r.pid == first.pid).ended, 10)
    assert "lost the cluster lease" in a.log(name)
    end_everything(net, name)
    found = check_history(net, name, allow_overlap=True)
    others = [run for run in found if run.host != first.host]
    assert others and all(run.token > first.token for run in others)


def test_a_partitioned_holder_stops_before_another_host_starts(sandbox: Sandbox, net: Network) -> None:
    name, first = started_two_hosts(sandbox, net)
    a = host_named(net, first.host)
    cut_at = time.monotonic()
    a.partition()
    try:
        nxt = takeover_after(net, name, first, cut_at)
        assert nxt.host != first.host
        old = next(run for run in runs(net.records) if run.pid == first.pid)
        assert old.ended, "the partitioned holder's daemon was not stopped (SIGTERM) in time"
        assert old.end < nxt.start
        assert old.end - cut_at <= TIMING.renew_deadline + TIMING.retry + 1
    finally:
        a.heal()
    end_everything(net, name)
    check_history(net, name)
    assert "lost the cluster lease" in a.log(name)


def test_a_database_restart_keeps_the_holder_and_one_copy(sandbox: Sandbox, net: Network,
                                                          pg_cluster: PgCluster) -> None:
    name, first = started_two_hosts(sandbox, net)
    restarted_at = time.monotonic()
    pg_cluster.restart("immediate")
    # Back within a second or two, well before the give-up: the holder renews on a new connection.
    assert wait_for(lambda: any(w[0] == first.token for w in net.fenced_writes(name)[-3:]), 15)
    time.sleep(TIMING.renew_deadline - (time.monotonic() - restarted_at) + TIMING.retry)
    assert holder(net, name).pid == first.pid, "the holder lost its lease to a database restart"
    end_everything(net, name)
    found = check_history(net, name)
    assert [run.token for run in found] == [first.token]


def test_twenty_hosts_launching_at_once_start_one_copy(sandbox: Sandbox, net: Network) -> None:
    name = sandbox.job("twenty")
    net.fence(name)
    hosts = [net.add_host(sandbox, f"host{i:02d}") for i in range(20)]
    barrier = threading.Barrier(len(hosts))
    results: dict[str, str] = {}

    def launch(host):  # type: ignore[no-untyped-def]
        barrier.wait()
        proc = host.launch(name)
        results[host.name] = f"{proc.returncode} {proc.stdout.strip()} {proc.stderr.strip()}"

    threads = [threading.Thread(target=launch, args=(h,)) for h in hosts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    try:
        assert len(results) == 20, results
        started = [h for h, text in results.items() if "running" in text]
        assert len(started) == 1, results
        refused = [h for h, text in results.items() if "not started here: held by" in text]
        assert len(refused) == 19, results
        found = runs(net.records)
        assert len(found) == 1 and found[0].host == started[0]
    finally:
        end_everything(net, name)
    check_history(net, name)
