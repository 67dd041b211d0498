"""The cluster lease against a real PostgreSQL (tests/kits/pgkit.py): grants, fencing tokens, expiry
on the database clock, races, the keeper's deadlines, sync slots, rotation, and `lease check`."""

from __future__ import annotations

import functools
import secrets
import socket
import threading
import time
from typing import TYPE_CHECKING, Any, Iterator, Optional

import pytest
from conftest import Sandbox, wait_for

from watchdog_singleton.cluster import Grant, LeaseError, LeaseUnavailable, Timing
from watchdog_singleton.cluster.engines import open_cluster
from watchdog_singleton.cluster.keeper import LOST, RENEWED, RETRY, LeaseKeeper
from watchdog_singleton.cluster.postgres import PostgresLease
from watchdog_singleton.errors import UserError

if TYPE_CHECKING:
    from pgkit import PgCluster

pytest_plugins = ["pgkit"]  # the pg_cluster fixture; imported here only for its type, so pytest can rewrite it

FAST = Timing(lease=1.5, renew_deadline=1.0, retry=0.5, attempt=0.5)
LONG = Timing(lease=60, renew_deadline=40, retry=10, attempt=5)


def fresh_name(base: str = "job") -> str:
    return f"{base}-{secrets.token_hex(3)}"


@pytest.fixture
def engines(pg_cluster: PgCluster) -> Iterator[Any]:
    """engine(holder, timing) -> a PostgresLease on the test database, as host `holder`; all closed at the end."""
    made: list[PostgresLease] = []

    def engine(holder: str, timing: Timing = LONG, url: Optional[str] = None) -> PostgresLease:
        lease = open_cluster(url or pg_cluster.url_with_passfile, timing, holder=holder, host=holder)
        assert isinstance(lease, PostgresLease)
        made.append(lease)
        return lease

    yield engine
    for lease in made:
        lease.close()


def fresh_database(pg_cluster: PgCluster) -> str:
    """A new, empty database owned by the test role: the URL (with the passfile) to reach it."""
    db = f"fresh_{secrets.token_hex(4)}"
    pg_cluster.psql(f'CREATE DATABASE {db} OWNER "{pg_cluster.user}"')
    return pg_cluster.url_with_passfile.replace(f"/{pg_cluster.dbname}?", f"/{db}?")


def db_row(pg_cluster: PgCluster, sql: str) -> str:
    return pg_cluster.psql(sql, dbname=pg_cluster.dbname).strip()


# -- grants ------------------------------------------------------------------------------------
def test_second_holder_gets_nothing_while_the_first_holds(engines: Any) -> None:
    name = fresh_name()
    a, b = engines("host-a"), engines("host-b")
    grant = a.acquire(name)
    assert grant is not None and grant.token >= 1 and grant.holder == "host-a"
    assert b.acquire(name) is None
    assert a.acquire(name) is None  # not even the holder gets a second grant
    assert b.check(name, grant.token) and a.check(name, grant.token)


def test_renew_keeps_the_token_and_release_lets_the_next_holder_in_with_a_higher_one(engines: Any) -> None:
    name = fresh_name()
    a, b = engines("host-a"), engines("host-b")
    grant = a.acquire(name)
    assert grant is not None
    renewed = a.renew(grant)
    assert renewed is not None and renewed.token == grant.token and renewed.expires_at >= grant.expires_at
    assert a.release(grant)
    assert not a.check(name, grant.token)
    assert a.renew(grant) is None, "a released grant cannot be renewed back to life"
    taken = b.acquire(name)
    assert taken is not None and taken.token == grant.token + 1
    assert a.release(grant) is False, "releasing a stale grant must not free the new holder's"
    assert b.check(name, taken.token)


def test_release_never_deletes_the_row(engines: Any, pg_cluster: PgCluster) -> None:
    name = fresh_name()
    a = engines("host-a")
    grant = a.acquire(name)
    assert grant is not None and a.release(grant)
    assert db_row(pg_cluster, f"SELECT generation FROM ws_lease WHERE name = '{name}'") == str(grant.token)


def test_tokens_strictly_increase_across_releases_expiries_and_takeovers(engines: Any) -> None:
    name = fresh_name()
    hosts = [engines(f"host-{i}", FAST) for i in range(3)]
    tokens: list[int] = []
    for round_ in range(6):
        engine = hosts[round_ % 3]
        grant = wait_for(functools.partial(engine.acquire, name), 10, what="the lease to be free")
        tokens.append(grant.token)
        if round_ % 2 == 0:
            assert engine.release(grant)  # released: the next one gets it at once
        # else: left to expire on the database clock
    assert tokens == sorted(set(tokens)) and len(tokens) == 6, tokens


def test_lease_expires_on_the_database_clock(engines: Any, pg_cluster: PgCluster) -> None:
    name = fresh_name()
    a, b = engines("host-a", FAST), engines("host-b", FAST)
    first = a.acquire(name)
    assert first is not None
    row = db_row(pg_cluster, f"SELECT extract(epoch FROM expires_at - acquired_at) FROM ws_lease WHERE name = '{name}'")
    assert float(row) == pytest.approx(FAST.lease), "the expiry is the database's now() plus the lease"
    assert b.acquire(name) is None
    second = wait_for(lambda: b.acquire(name), 10, interval=0.05, what="the lease to expire")
    assert second.token == first.token + 1
    # B got it only once the database's clock had passed A's expiry.
    assert db_row(pg_cluster, f"SELECT acquired_at >= '{first.expires_at}'::timestamptz FROM ws_lease "
                              f"WHERE name = '{name}'") == "t"
    assert a.renew(first) is None, "the expired holder cannot renew"
    assert not a.check(name, first.token) and b.check(name, second.token)


def test_an_expired_grant_cannot_be_renewed_even_if_nobody_took_it(engines: Any) -> None:
    name = fresh_name()
    a = engines("host-a", FAST)
    grant = a.acquire(name)
    assert grant is not None
    wait_for(lambda: not a.check(name, grant.token), 10, what="the grant to expire")
    assert a.renew(grant) is None


def test_twenty_concurrent_acquirers_on_a_fresh_database_exactly_one_wins(engines: Any,
                                                                          pg_cluster: PgCluster) -> None:
    url = fresh_database(pg_cluster)  # the racers also race to create the tables
    name = fresh_name()
    contenders = [engines(f"host-{i:02d}", LONG, url) for i in range(20)]
    for engine in contenders:
        engine._connect()  # connected first, so that the barrier lines up the statements
    barrier = threading.Barrier(len(contenders))
    results: list[Optional[Grant]] = [None] * len(contenders)
    errors: list[BaseException] = []

    def race(i: int) -> None:
        try:
            barrier.wait(timeout=30)
            results[i] = contenders[i].acquire(name)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=race, args=(i,)) for i in range(len(contenders))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    winners = [grant for grant in results if grant is not None]
    assert len(winners) == 1, winners
    assert winners[0].token == 1


def test_contending_holders_never_hold_at_once(engines: Any) -> None:
    name = fresh_name()
    timing = Timing(lease=5, renew_deadline=4, retry=1, attempt=1)  # holds last ms: far below the lease
    contenders = [engines(f"host-{i}", timing) for i in range(6)]
    lock = threading.Lock()
    holding: list[str] = []
    most = 0
    tokens: list[int] = []
    stop_at = time.monotonic() + 2.0

    def contend(engine: PostgresLease) -> None:
        nonlocal most
        while time.monotonic() < stop_at:
            grant = engine.acquire(name)
            if grant is None:
                continue
            with lock:
                holding.append(engine.holder)
                most = max(most, len(holding))
                tokens.append(grant.token)
            time.sleep(0.002)
            with lock:
                holding.remove(engine.holder)
            assert engine.release(grant)

    threads = [threading.Thread(target=contend, args=(engine,)) for engine in contenders]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(tokens) > 20, "too few grants to say anything"
    assert most == 1
    assert tokens == list(range(tokens[0], tokens[0] + len(tokens))), "each grant the next token, none twice"


def test_requests_leave_no_prepared_statement_nor_advisory_lock(engines: Any) -> None:
    """What keeps it safe behind PgBouncer in transaction mode."""
    name = fresh_name()
    a = engines("host-a")
    grant = a.acquire(name)
    assert grant is not None
    for _ in range(10):  # psycopg would prepare after 5 executions unless told not to
        grant = a.renew(grant)
        assert grant is not None
        assert a.check(name, grant.token)
    conn = a._connect()
    assert conn.execute("SELECT count(*) FROM pg_prepared_statements").fetchone() == (0,)
    assert conn.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'").fetchone() == (0,)
    assert conn.execute("SHOW statement_timeout").fetchone() == ("0",), "the timeout lives in each statement only"
    assert conn.info.transaction_status == 0  # idle, never idle in a transaction


def test_a_newer_schema_is_refused(engines: Any, pg_cluster: PgCluster) -> None:
    url = fresh_database(pg_cluster)
    a = engines("host-a", LONG, url)
    a.ensure_schema()
    a._connect().execute("UPDATE ws_meta SET value = '2' WHERE key = 'schema_version'")
    with pytest.raises(LeaseError, match="schema version 2"):
        a.ensure_schema()


def test_timing_must_follow_client_go_rules() -> None:
    assert Timing().lease > Timing().renew_deadline > 1.2 * Timing().retry
    for bad in ({"lease": 40, "renew_deadline": 40}, {"renew_deadline": 12, "retry": 10},
                {"lease": float("nan")}, {"retry": 0}, {"attempt": 20}):
        with pytest.raises(UserError):
            Timing(**bad)


# -- the keeper ----------------------------------------------------------------------------------
class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_keeper_renews_every_retry_and_gives_up_at_the_renew_deadline_while_the_database_is_down(
        engines: Any, pg_cluster: PgCluster) -> None:
    clock = FakeClock()
    keeper = LeaseKeeper(engines("host-a"), fresh_name(), LONG, clock)
    assert keeper.acquire() is not None
    assert not keeper.due(clock.now) and keeper.wake_at() == clock.now + LONG.retry
    clock.now += LONG.retry
    assert keeper.due(clock.now) and keeper.renew() == RENEWED
    assert keeper.give_up_at == clock.now + LONG.renew_deadline
    pg_cluster.stop("immediate")
    try:
        clock.now += LONG.retry
        assert keeper.renew() == RETRY and "cluster database" in keeper.problem
        assert not keeper.lost(clock.now)
        clock.now = keeper.give_up_at - 0.001
        assert not keeper.lost(clock.now)
        clock.now = keeper.give_up_at
        assert keeper.lost(clock.now)
        assert keeper.renew() == LOST
    finally:
        pg_cluster.start()
    assert keeper.release() is True, "the grant had not expired on the database: released"


def test_keeper_reports_lost_when_another_host_took_the_lease(engines: Any) -> None:
    name = fresh_name()
    keeper = LeaseKeeper(engines("host-a", FAST), name, FAST)
    grant = keeper.acquire()
    assert grant is not None
    taken = wait_for(lambda: engines("host-b", FAST).acquire(name), 10, what="the lease to expire")
    assert taken.token > grant.token
    assert keeper.renew() == LOST and keeper.lost(0.0)
    assert keeper.release() is False


# -- sync and rotation ----------------------------------------------------------------------------
def test_sync_slot_at_most_once_per_period_across_hosts(engines: Any, pg_cluster: PgCluster) -> None:
    name = fresh_name("sync")
    a, b = engines("host-a"), engines("host-b")
    assert a.claim_slot(name, 1.0) == 1
    assert b.claim_slot(name, 1.0) is None and a.claim_slot(name, 1.0) is None
    first = db_row(pg_cluster, f"SELECT last_start FROM ws_sync WHERE name = '{name}'")
    assert wait_for(lambda: b.claim_slot(name, 1.0), 10, what="the next period") == 2
    gap = db_row(pg_cluster, f"SELECT extract(epoch FROM last_start - '{first}'::timestamptz) FROM ws_sync "
                             f"WHERE name = '{name}'")
    assert float(gap) >= 1.0, "the period counts on the database clock from the last start"
    info = a.status(name)
    assert info is not None and info.slot == 2 and info.token is None


def test_rotation_visits_live_hosts_in_name_order_and_skips_a_stale_one(engines: Any,
                                                                        pg_cluster: PgCluster) -> None:
    name = fresh_name("rot")
    hosts = {h: engines(h) for h in ("host-a", "host-b", "host-c")}
    for engine in hosts.values():
        engine.heartbeat(name)
    assert hosts["host-a"].live_hosts(name, 60) == ["host-a", "host-b", "host-c"]
    assert hosts["host-a"].whose_turn(name, 60) == "host-a"
    assert hosts["host-a"].pass_turn(name, 60) == "host-b"
    assert hosts["host-b"].pass_turn(name, 60) == "host-c"
    assert hosts["host-c"].pass_turn(name, 60) == "host-a", "wraps round"
    db_row(pg_cluster, f"UPDATE ws_host SET seen_at = now() - interval '1 hour' WHERE name = '{name}' "
                       "AND host = 'host-b'")
    assert hosts["host-a"].pass_turn(name, 60) == "host-c", "a stale host is skipped"
    db_row(pg_cluster, f"UPDATE ws_turn SET host = 'host-b' WHERE name = '{name}'")
    assert hosts["host-a"].whose_turn(name, 60) == "host-c", "a stale host's turn goes to the next live one"


# -- the command line ------------------------------------------------------------------------------
def test_lease_check_exits_0_while_current_1_once_stale_2_on_bad_input(engines: Any, pg_cluster: PgCluster,
                                                                       sandbox: Sandbox) -> None:
    name = fresh_name()
    a = engines("host-a")
    grant = a.acquire(name)
    assert grant is not None
    url = str(pg_cluster)  # no password: the test user's ~/.pgpass has it
    ok = sandbox.ws("lease", "check", name, "--token", str(grant.token), "--cluster", url)
    assert (ok.returncode, ok.stdout, ok.stderr) == (0, "", "")
    env = sandbox.env({"WATCHDOG_SINGLETON_CLUSTER": url})
    assert sandbox.ws("lease", "check", name, "--token", str(grant.token), env=env).returncode == 0
    assert a.release(grant)
    stale = sandbox.ws("lease", "check", name, "--token", str(grant.token), "--cluster", url)
    assert stale.returncode == 1 and stale.stderr.count("\n") == 1 and "stale" in stale.stderr
    assert f"free (last holder host-a, token {grant.token}" in stale.stderr, stale.stderr
    # A token above every grant (another database's, a typo) is refused, and said to be so.
    never = sandbox.ws("lease", "check", name, "--token", str(grant.token + 5), "--cluster", url)
    assert never.returncode == 1 and never.stderr.count("\n") == 1, never.stderr
    assert f"was never granted: the latest grant is {grant.token}" in never.stderr, never.stderr
    for bad in (["--token", "x"], ["--token", "0"], ["--token", str(2**63)], []):
        proc = sandbox.ws("lease", "check", name, *bad, "--cluster", url)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1, (bad, proc.stderr)
    nowhere = sandbox.ws("lease", "check", name, "--token", "1")
    assert nowhere.returncode == 2 and "WATCHDOG_SINGLETON_CLUSTER" in nowhere.stderr
    status = sandbox.ws("lease", "status", name, "--cluster", url)
    assert status.returncode == 0 and f"token {grant.token}" in status.stdout and "free" in status.stdout


@pytest.mark.parametrize("where", ["closed port", "silent server"])
def test_unreachable_database_is_one_line_exit_3_and_quick(pg_cluster: PgCluster, sandbox: Sandbox,
                                                            where: str) -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        if where == "silent server":
            silent.listen(8)  # accepts TCP, never answers: only connect_timeout ends the wait
        port = silent.getsockname()[1]
        url = f"postgresql://{pg_cluster.user}@127.0.0.1:{port}/{pg_cluster.dbname}"
        for argv in (["check", "job", "--token", "1"], ["status", "job"]):
            started = time.monotonic()
            proc = sandbox.ws("lease", *argv, "--cluster", url)
            took = time.monotonic() - started
            assert proc.returncode == 3, proc.stderr
            assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
            assert "cannot reach cluster database" in proc.stderr and proc.stdout == ""
            assert took < LONG.attempt + 4, f"took {took:.1f} s"


def test_engine_unreachable_raises_lease_unavailable(engines: Any, pg_cluster: PgCluster) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        a = engines("host-a", LONG, f"postgresql://{pg_cluster.user}@127.0.0.1:{port}/x")
        with pytest.raises(LeaseUnavailable, match="cannot reach"):
            a.acquire(fresh_name())
