"""The cluster house's one connection per database, end to end: five shared cluster jobs of one
user on one host hold one PostgreSQL connection between them, every lease is renewed over it, and
a connection the server drops is opened again with nothing stopped. The renew's rules (one round
trip, a row lost for one job alone, an error a retry for all) are pinned in
tests/world/test_house_cluster_renew.py."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import pytest
from conftest import Sandbox, holds_for, is_zombie, pids_with_arg, wait_for
from sharedkit import residents
from test_house_cluster_e2e import TIMING, install

from watchdog_singleton.cluster import LeaseUnavailable, Timing

if TYPE_CHECKING:
    from pgkit import PgCluster

pytest_plugins = ["pgkit"]

JOBS = 5


def live(box: Sandbox, marker: str) -> list[int]:
    return [pid for pid in pids_with_arg(marker, box.user.uid) if not is_zombie(pid)]


def backends(pg: PgCluster) -> list[int]:
    """The server pids of our connections (the test user's, named watchdog-singleton)."""
    out = pg.psql(f"SELECT pid FROM pg_stat_activity WHERE usename = '{pg.user}' "
                  "AND application_name = 'watchdog-singleton' ORDER BY pid")
    return [int(line) for line in out.split()]


def renewed_at(pg: PgCluster, names: list[str]) -> dict[str, float]:
    listed = ", ".join(f"'{n}'" for n in names)
    out = pg.psql(f"SELECT name, extract(epoch FROM renewed_at) FROM ws_lease WHERE name IN ({listed})",
                  dbname=pg.dbname)
    return {name: float(when) for name, when in (line.split("|") for line in out.split())}


def all_renewed_after(pg: PgCluster, names: list[str], after: dict[str, float]) -> bool:
    now = renewed_at(pg, names)
    return len(now) == len(names) and all(now[n] > after[n] for n in names)


def test_five_shared_cluster_jobs_hold_one_connection_and_survive_its_loss(sandbox: Sandbox,
                                                                            pg_cluster: PgCluster) -> None:
    jobs = [install(sandbox, str(pg_cluster), f"c{i}", grace=1.0) for i in range(JOBS)]
    names = [name for name, _ in jobs]
    try:
        for name in names:
            wait_for(lambda name=name: os.path.exists(sandbox.path(name + ".token")), 20,  # type: ignore[misc]
                     what=f"{name}'s daemon")
        [house] = residents(sandbox)
        daemons = {name: live(sandbox, marker) for name, marker in jobs}
        assert all(len(pids) == 1 for pids in daemons.values()), daemons
        # One connection for all five (the installs' own connections are closed by now).
        wait_for(lambda: len(backends(pg_cluster)) == 1, 10, what="one connection left")
        assert holds_for(lambda: len(backends(pg_cluster)) == 1, 3 * TIMING.retry, interval=0.2), backends(pg_cluster)
        # Every lease is renewed over it, again and again.
        before = renewed_at(pg_cluster, names)
        wait_for(lambda: all_renewed_after(pg_cluster, names, before), 3 * TIMING.retry, what="every lease renewed")
        # The server drops it: the house opens another at its next round trip; nothing is stopped.
        [backend] = backends(pg_cluster)
        pg_cluster.psql(f"SELECT pg_terminate_backend({backend})")
        wait_for(lambda: backends(pg_cluster) not in ([], [backend]), 10, what="a new connection")
        after = renewed_at(pg_cluster, names)
        wait_for(lambda: all_renewed_after(pg_cluster, names, after), 3 * TIMING.retry, what="renewed again")
        assert len(backends(pg_cluster)) == 1
        assert {name: live(sandbox, marker) for name, marker in jobs} == daemons, "a daemon was stopped"
        assert residents(sandbox) == [house]
    finally:
        for name in names:
            sandbox.ws("uninstall", name)


def test_renew_all_renews_every_grant_in_one_statement_and_leaves_out_one_taken(pg_cluster: PgCluster) -> None:
    """PostgresLink.renew_all on the real schema: each row its own lease, a row another host took
    is not in the answer (lost for that job alone), and a busy connection is an outage, not a wait."""
    import secrets
    import threading

    from watchdog_singleton.cluster.engines import open_link

    names = [f"ra-{secrets.token_hex(3)}-{i}" for i in range(3)]
    short, long = Timing.for_lease(6.0), Timing.for_lease(60.0)
    link = open_link(pg_cluster.url_with_passfile, long, host="h1")
    try:
        engines = [link.lease_for(short), link.lease_for(short), link.lease_for(long)]
        grants = [engine.acquire(name) for engine, name in zip(engines, names)]
        assert all(g is not None for g in grants)
        # Another host takes the first row (as after its expiry): a new holder, a new token.
        pg_cluster.psql(f"UPDATE ws_lease SET holder = 'h2:b:1:1', generation = generation + 1 "
                        f"WHERE name = '{names[0]}'", dbname=pg_cluster.dbname)
        asks = [(g, t.lease) for g, t in zip(grants, (short, short, long)) if g is not None]
        renewed = link.renew_all(asks, short.attempt)
        assert sorted(renewed) == sorted(names[1:])
        left = pg_cluster.psql(f"SELECT name, round(extract(epoch FROM expires_at - renewed_at)) FROM ws_lease "
                               f"WHERE name IN ('{names[1]}', '{names[2]}') ORDER BY name", dbname=pg_cluster.dbname)
        assert sorted(left.split()) == sorted([f"{names[1]}|6", f"{names[2]}|60"])  # random names: any order
        # The connection held by another round trip for longer than ours may take: unavailable.
        held = threading.Event()
        done = threading.Event()

        def hold() -> None:
            with link.lock:  # type: ignore[attr-defined]
                held.set()
                done.wait(10)
        threading.Thread(target=hold, daemon=True).start()
        assert held.wait(5)
        try:
            with pytest.raises(LeaseUnavailable, match="busy"):
                link.renew_all(asks[1:], 0.2)
        finally:
            done.set()
        for engine, grant in zip(engines[1:], grants[1:]):
            assert grant is not None and engine.release(grant)
    finally:
        link.drop()
