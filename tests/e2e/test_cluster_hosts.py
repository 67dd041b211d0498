"""One copy across hosts, under faults: several hosts on this machine (tests/kits/hostkit.py: network
and UTS namespaces, a bridge to the real PostgreSQL of tests/kits/pgkit.py), each with a driver that
ticks its launcher every second, as cron would. The daemons record their runs on the machine's
one monotonic clock and make writes guarded by their fencing token.

Must hold: run intervals never overlap across hosts (SIGSTOP excepted, where the stale holder's
guarded write is rejected); tokens strictly increase; takeover within lease + retry (+ a tick);
twenty launchers at once start one copy."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from typing import TYPE_CHECKING, Any, Iterator

import pytest
from conftest import Sandbox, holds_for, wait_for
from hostkit import (
    BEAT,
    CopySampler,
    Host,
    Network,
    Run,
    TickDriver,
    end_everything,
    live_now,
    netns_problem,
    overlaps,
    runs,
)

from watchdog_singleton.cluster import Timing
from watchdog_singleton.errors import NO_SUCH_JOB, UNAVAILABLE

if TYPE_CHECKING:
    from pgkit import PgCluster

pytest_plugins = ["pgkit"]

LEASE = 6.0
TIMING = Timing.for_lease(LEASE)
TICK = 1.0
LAUNCH = 1.5  # a launcher's own start: an interpreter, psycopg, one connection (loaded machine)
TAKEOVER = LEASE + TIMING.retry + TICK + LAUNCH  # after the holder stops renewing, at the latest

_PROBLEM = netns_problem()
needs_hosts = pytest.mark.skipif(bool(_PROBLEM), reason=_PROBLEM or "ok")


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


def one_copy_running(net: Network, only: Run) -> bool:
    """`only` is the one run that beats now, on any host."""
    return [run.pid for run in live_now(runs(net.records), time.monotonic(), slack=1.0)] == [only.pid]


def takeover_after(net: Network, name: str, first: Run, since: float) -> Run:
    def successor() -> list[Run]:
        return [run for run in runs(net.records) if run.token > first.token]
    assert wait_for(successor, LEASE + TIMING.retry + TICK + LAUNCH + 5), "no takeover"
    nxt = successor()[0]
    assert nxt.host != first.host or nxt.start > since
    return nxt


def test_the_record_reader_ends_a_killed_run_a_beat_after_its_last_and_sees_an_overlap(tmp_path: Any) -> None:
    """What every fault test's verdict rests on (no root needed): a run killed by SIGKILL (no
    `end`, maybe a cut last line) ends one beat after its last beat; a run on another host that
    starts before that end overlaps it, one that starts after does not; same-host runs never count."""
    def record(host: str, pid: int, text: str) -> None:
        (tmp_path / f"{host}-{pid}.run").write_text(text)

    record("hosta", 11, "start 10.0 1\nbeat 10.1\nnowrite 11.9 OperationalError\nbeat 12.0\nbea")
    record("hostb", 22, "start 12.05 2\nbeat 12.15\nend 13.0\n")
    record("hosta", 33, "start 12.9 3\nbeat 13.0\n")  # same host as 11: flock's business, not ours
    found = runs(str(tmp_path))
    assert [(r.host, r.token, r.ended) for r in found] == [("hosta", 1, False), ("hostb", 2, True), ("hosta", 3, False)]
    assert found[0].end == pytest.approx(12.0 + BEAT) and found[1].end == 13.0
    assert [(a.pid, b.pid) for a, b in overlaps(found)] == [(11, 22), (22, 33)]
    (tmp_path / "hostb-22.run").write_text("start 12.2 2\nend 12.8\n")
    assert overlaps(runs(str(tmp_path))) == []


@needs_hosts
def test_each_host_has_its_own_name_and_reaches_the_database_only_through_its_veth(sandbox: Sandbox,
                                                                                   net: Network) -> None:
    """The harness itself, without the cluster behaviour: every host answers `lease status` as the
    test user under its own host name; the server's 127.0.0.1 is not reachable from a host (its
    only way is the veth); a partition drops packets, so the next query fails after its timeout
    (not at once, as a refused connection would), with one line; heal() brings it back."""
    name = sandbox.job("conn")  # no host ever takes it: the database answers "no lease named ..." (4)
    hosts = [net.add_host(sandbox, label) for label in ("hosta", "hostb", "hostc")]

    def ask(host: Host, url: str = net.url, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return host.ws("lease", "status", name, "--cluster", url, timeout=timeout)

    for host in hosts:
        who = host.run(["sh", "-c", 'echo "$(hostname) $(id -u) $(ip -4 -o addr show eth0 | wc -l)"'])
        assert who.stdout.split() == [host.name, str(sandbox.user.uid), "1"], who
        answer = ask(host)
        assert answer.returncode == NO_SUCH_JOB and "no lease named" in answer.stderr, answer.stderr
    local = ask(hosts[0], str(net.pg))  # the server's own 127.0.0.1: a host's 127.0.0.1 is its own loopback
    assert local.returncode == UNAVAILABLE, local.stderr
    cut, other = hosts[0], hosts[1]
    cut.partition()
    try:
        t0 = time.monotonic()
        failed = ask(cut, timeout=40)
        took = time.monotonic() - t0
        assert failed.returncode == UNAVAILABLE, failed.stderr
        assert "Traceback" not in failed.stderr and len(failed.stderr.strip().splitlines()) == 1, failed.stderr
        assert 1.5 <= took <= 20, f"a partitioned host's query failed after {took:.1f} s (dropped packets wait)"
        assert ask(other).returncode == NO_SUCH_JOB  # only that host is cut off
    finally:
        cut.heal()
    assert wait_for(lambda: ask(cut).returncode == NO_SUCH_JOB, 20, interval=0.5,
                    what="the healed host to reach the database again")


@needs_hosts
def test_kill_9_of_the_holders_supervisor_and_daemon(sandbox: Sandbox, net: Network) -> None:
    name, first = started_two_hosts(sandbox, net)
    a = host_named(net, first.host)
    driver = next(d for d in net.drivers if d.host is a)
    driver.paused.set()  # the dead host stays dead: the other host must take over
    killed_at = time.monotonic()
    assert a.signal_tree(name, signal.SIGKILL)
    nxt = takeover_after(net, name, first, killed_at)
    assert nxt.host != first.host
    took = nxt.start - killed_at  # the lease was renewed at most `retry` before the kill, and runs out
    assert took <= TAKEOVER, f"takeover took {took:.1f} s (lease {LEASE:g} + retry {TIMING.retry:g} + a tick)"
    assert not next(run for run in runs(net.records) if run.pid == first.pid).ended  # it was killed, not stopped
    driver.paused.clear()  # the dead host's cron ticks again: it stands by, the new holder keeps running
    assert holds_for(lambda: one_copy_running(net, nxt), 2 * TICK + LAUNCH), runs(net.records)
    end_everything(net, name)
    check_history(net, name)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X")
    except OSError:
        return False


@needs_hosts
@pytest.mark.parametrize("fault", ["SIGKILL", "SIGSTOP"])
def test_the_holders_supervisor_alone_killed_or_stopped_never_runs_beside_the_next_holder(
        sandbox: Sandbox, net: Network, fault: str) -> None:
    """The OOM killer takes the supervisor alone (SIGKILL), or it alone is stopped (SIGSTOP, then
    SIGCONT): its daemon and the daemon's env-cleared, setsid'd grandchild must be gone before
    the lease can pass to the standby on the other host. Sampled every 50 ms from /proc, never
    two hosts with a copy at once."""
    name = sandbox.job("alone")
    net.fence(name)
    for label in ("hosta", "hostb"):
        TickDriver(net.add_host(sandbox, label), name, TICK, options=("--standby",), daemon_args=("--grandchild",))
    assert wait_for(lambda: runs(net.records), 20), "no host started the daemon"
    assert wait_for(lambda: runs(net.records, ".kid"), 10), "the daemon left no grandchild"
    first = holder(net, name)
    kid = next(run for run in runs(net.records, ".kid") if run.token == first.token)
    a = host_named(net, first.host)
    next(d for d in net.drivers if d.host is a).paused.set()  # the standby on the other host takes over
    supervisor = a.supervisor(name)
    assert supervisor and alive(kid.pid)
    sampler = CopySampler(net, name)
    try:
        assert wait_for(lambda: sampler.samples and sampler.samples[-1][1] == {a.name}, 5)
        faulted_at = time.monotonic()
        os.kill(supervisor, getattr(signal, fault))
        nxt = takeover_after(net, name, first, faulted_at)
        assert nxt.host != first.host
        assert not alive(first.pid) and not alive(kid.pid), "the old holder's tree outlived its supervisor"
        old = next(run for run in runs(net.records) if run.pid == first.pid)
        old_kid = next(run for run in runs(net.records, ".kid") if run.pid == kid.pid)
        assert max(old.end, old_kid.end) < nxt.start
        took = nxt.start - faulted_at
        assert took <= TAKEOVER, f"takeover took {took:.1f} s"
        if fault == "SIGSTOP":
            os.kill(supervisor, signal.SIGCONT)  # it wakes, finds the lease lost, and stands by
            assert wait_for(lambda: "lost the cluster lease" in a.log(name), 10), a.log(name)
        next(d for d in net.drivers if d.host is a).paused.clear()
        assert holds_for(lambda: one_copy_running(net, nxt), 2 * TICK + LAUNCH), runs(net.records)
    finally:
        sampler.stop()
    assert len(sampler.samples) > 100, len(sampler.samples)
    assert sampler.doubles() == [], f"two hosts ran a copy at once: {sampler.doubles()[:5]}"
    assert "watcher:" in a.log(name)
    end_everything(net, name)
    check_history(net, name)


@needs_hosts
def test_sigstop_of_the_holders_tree_past_the_lease_then_sigcont(sandbox: Sandbox, net: Network) -> None:
    name, first = started_two_hosts(sandbox, net)
    a = host_named(net, first.host)
    stopped_at = time.monotonic()
    assert a.signal_tree(name, signal.SIGSTOP)
    nxt = takeover_after(net, name, first, stopped_at)
    assert nxt.host != first.host
    assert nxt.start - stopped_at <= TAKEOVER, f"takeover took {nxt.start - stopped_at:.1f} s"
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
    # Only the frozen run may overlap (it was frozen, then stopped): no two live copies otherwise.
    assert [pair for pair in overlaps(found) if first.pid not in (pair[0].pid, pair[1].pid)] == []


@needs_hosts
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
        # Its last renew was before the cut, so its lease ran out at most `lease` after it.
        assert old.end - cut_at < LEASE, f"the cut-off holder ran {old.end - cut_at:.1f} s past the cut"
        assert nxt.start - cut_at <= TAKEOVER, f"takeover took {nxt.start - cut_at:.1f} s"
    finally:
        a.heal()
    # Healed, the host's ticks reach the database again and find the lease held: still one copy.
    assert holds_for(lambda: one_copy_running(net, nxt), 2 * TICK + LAUNCH), runs(net.records)
    end_everything(net, name)
    check_history(net, name)
    assert "lost the cluster lease" in a.log(name)


@needs_hosts
def test_a_database_restart_keeps_the_holder_and_one_copy(sandbox: Sandbox, net: Network,
                                                          pg_cluster: PgCluster) -> None:
    name, first = started_two_hosts(sandbox, net)
    restarted_at = time.monotonic()
    pg_cluster.restart("immediate")
    # Back within a second or two, well before the give-up: the holder renews on a new connection.
    assert wait_for(lambda: any(w[0] == first.token for w in net.fenced_writes(name)[-3:]), 15)
    # Past the holder's give-up deadline (counted from the restart) and a retry: still the one copy.
    left = TIMING.renew_deadline + TIMING.retry - (time.monotonic() - restarted_at)
    assert holds_for(lambda: [(r.pid, r.ended) for r in runs(net.records)] == [(first.pid, False)], max(left, 0.0)), \
        f"the holder lost its lease to a database restart: {runs(net.records)}"
    assert holder(net, name).pid == first.pid
    end_everything(net, name)
    found = check_history(net, name)
    assert [run.token for run in found] == [first.token]


@needs_hosts
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
        assert wait_for(lambda: runs(net.records), 10, what="the one daemon's record")
        assert holds_for(lambda: len(runs(net.records)) == 1, 2 * TICK), runs(net.records)
        assert runs(net.records)[0].host == started[0]
    finally:
        end_everything(net, name)
    check_history(net, name)
