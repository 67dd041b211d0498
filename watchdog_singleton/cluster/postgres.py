"""The cluster lease on PostgreSQL: one row per job name, changed only by single statements
timed on the database's clock.

Why each choice:
- A row, not a session advisory lock: an advisory lock silently frees when its connection drops
  and breaks behind PgBouncer in transaction mode; a row updated by single statements works
  through any pooler and survives our reconnects.
- `now()` only, never our clock: the hosts' clocks may disagree; the database's is the one clock
  all of them read. `now()` is the start of the statement's transaction, after we sent it, so a
  grant expires no earlier than `lease` seconds after our send time: the holder's deadline,
  counted from its send time on its own clock, is always on the safe side.
- Release expires the row and never deletes it: the generation (the fencing token) then only
  grows, across releases, expiries and takeovers.
- Autocommit, each request one Query message in the simple protocol (psycopg's ClientCursor):
  no prepared statement (prepare_threshold=None), no session state, no idle transaction. The
  `SET LOCAL statement_timeout` in front of each statement lives and dies with that one
  implicit transaction, so it is safe behind a transaction-mode pooler too.
- TCP keepalives and tcp_user_timeout bound how long a round trip can hang on a dead network,
  so a renew never outlasts Timing.attempt by much.
"""

from __future__ import annotations

import math
from typing import Any, Optional

from ..errors import USAGE, UserError
from . import Grant, LeaseError, LeaseInfo, LeaseUnavailable, Timing, holder_id, redact

SCHEMA_VERSION = 1
SCHEMA_LOCK = 0x77732D6C65617365  # "ws-lease": serialises the CREATE TABLEs of racing first users

SCHEMA = f"""
SELECT pg_advisory_xact_lock({SCHEMA_LOCK});
CREATE TABLE IF NOT EXISTS ws_meta(key text PRIMARY KEY, value text NOT NULL);
INSERT INTO ws_meta VALUES ('schema_version', '{SCHEMA_VERSION}') ON CONFLICT (key) DO NOTHING;
CREATE TABLE IF NOT EXISTS ws_lease(
  name text PRIMARY KEY, holder text NOT NULL, generation bigint NOT NULL,
  acquired_at timestamptz NOT NULL, renewed_at timestamptz NOT NULL, expires_at timestamptz NOT NULL);
CREATE TABLE IF NOT EXISTS ws_sync(
  name text PRIMARY KEY, last_start timestamptz NOT NULL, generation bigint NOT NULL, holder text NOT NULL);
CREATE TABLE IF NOT EXISTS ws_host(
  name text NOT NULL, host text NOT NULL, seen_at timestamptz NOT NULL, PRIMARY KEY (name, host));
CREATE TABLE IF NOT EXISTS ws_turn(name text PRIMARY KEY, host text NOT NULL, set_at timestamptz NOT NULL);
SELECT value FROM ws_meta WHERE key = 'schema_version'
"""

# Granted: a row with granted = true. Held by another: its holder, granted = false (the snapshot
# the statement started with; nothing when that row was being inserted by a racer). A first
# INSERT race is settled by the primary key: the loser waits for the winner's row, then finds it
# unexpired and gets nothing. Every ask is also this host's heartbeat (the hosts seen recently).
ACQUIRE = """
WITH beat AS (
  INSERT INTO ws_host AS h (name, host, seen_at) VALUES (%(name)s, %(host)s, now())
  ON CONFLICT (name, host) DO UPDATE SET seen_at = now()),
got AS (
  INSERT INTO ws_lease AS l (name, holder, generation, acquired_at, renewed_at, expires_at)
  VALUES (%(name)s, %(holder)s, 1, now(), now(), now() + make_interval(secs => %(ttl)s))
  ON CONFLICT (name) DO UPDATE SET holder = EXCLUDED.holder, generation = l.generation + 1,
    acquired_at = now(), renewed_at = now(), expires_at = EXCLUDED.expires_at
  WHERE l.expires_at <= now()
  RETURNING generation, expires_at)
SELECT generation, expires_at, true, '' FROM got
UNION ALL
SELECT generation, expires_at, false, holder FROM ws_lease
WHERE name = %(name)s AND NOT EXISTS (SELECT 1 FROM got)
"""

# No row: lost (expired, released or taken); the holder stops its tree.
RENEW = """
WITH beat AS (
  INSERT INTO ws_host AS h (name, host, seen_at) VALUES (%(name)s, %(host)s, now())
  ON CONFLICT (name, host) DO UPDATE SET seen_at = now())
UPDATE ws_lease SET renewed_at = now(), expires_at = now() + make_interval(secs => %(ttl)s)
WHERE name = %(name)s AND holder = %(holder)s AND generation = %(token)s AND expires_at > now()
RETURNING generation, expires_at
"""

RELEASE = """
UPDATE ws_lease SET expires_at = now()
WHERE name = %(name)s AND holder = %(holder)s AND generation = %(token)s AND expires_at > now()
RETURNING generation
"""

CHECK = """
SELECT EXISTS (SELECT 1 FROM ws_lease WHERE name = %(name)s AND generation = %(token)s AND expires_at > now())
"""

STATUS = """
SELECT l.holder, l.generation, l.expires_at, coalesce(l.expires_at > now(), false),
  greatest(0, extract(epoch FROM l.expires_at - now()))::float8, s.last_start, s.generation, now()
FROM (SELECT %(name)s::text AS name) k
LEFT JOIN ws_lease l ON l.name = k.name LEFT JOIN ws_sync s ON s.name = k.name
"""

# PanDA's sync, with a generation: a start stamp on the database clock, claimed at most once per
# period counted from the last start on any host.
CLAIM_SLOT = """
INSERT INTO ws_sync AS s (name, last_start, generation, holder) VALUES (%(name)s, now(), 1, %(holder)s)
ON CONFLICT (name) DO UPDATE SET last_start = now(), generation = s.generation + 1, holder = EXCLUDED.holder
WHERE s.last_start <= now() - make_interval(secs => %(period)s)
RETURNING generation
"""

# Rotation (enqueue_command): hosts beat; when a run ends the turn passes to the next live host
# in name order after this one (wrapping round), or stays here when no other host is live.
HEARTBEAT = """
INSERT INTO ws_host AS h (name, host, seen_at) VALUES (%(name)s, %(host)s, now())
ON CONFLICT (name, host) DO UPDATE SET seen_at = now()
"""

LIVE_HOSTS = """
SELECT host FROM ws_host WHERE name = %(name)s AND seen_at > now() - make_interval(secs => %(fresh)s)
ORDER BY host
"""

PASS_TURN = """
WITH live AS (SELECT host FROM ws_host
              WHERE name = %(name)s AND seen_at > now() - make_interval(secs => %(fresh)s))
INSERT INTO ws_turn AS t (name, host, set_at)
VALUES (%(name)s, coalesce((SELECT min(host) FROM live WHERE host > %(host)s),
                           (SELECT min(host) FROM live), %(host)s), now())
ON CONFLICT (name) DO UPDATE SET host = EXCLUDED.host, set_at = now()
RETURNING host
"""

# Whose turn: the recorded host while it is live, else the next live one after it.
WHOSE_TURN = """
WITH live AS (SELECT host FROM ws_host
              WHERE name = %(name)s AND seen_at > now() - make_interval(secs => %(fresh)s)),
     turn AS (SELECT host FROM ws_turn WHERE name = %(name)s)
SELECT coalesce((SELECT host FROM live WHERE host = (SELECT host FROM turn)),
                (SELECT min(host) FROM live WHERE host > (SELECT host FROM turn)),
                (SELECT min(host) FROM live))
"""


def _driver() -> Any:
    try:
        import psycopg
    except ImportError:
        from ..paths import psycopg_hint

        raise UserError(f"cluster leases need psycopg 3: {psycopg_hint()}", USAGE) from None
    return psycopg


def url_problem(url: str) -> str:
    """Why libpq cannot take `url` (its syntax, an unknown parameter), asked without connecting:
    bad input, which no retry mends; "" when it can, or when psycopg is missing (said elsewhere)."""
    try:
        from psycopg.conninfo import conninfo_to_dict
    except ImportError:
        return ""
    try:
        conninfo_to_dict(url)
    except Exception as exc:  # psycopg.ProgrammingError: libpq's own words  # noqa: BLE001
        return f"cluster {redact(url)!r}: {_first_line(exc)}"
    return ""


def holder_host(holder: str) -> str:
    """The host part of a holder id (host:boot_id:pid:start)."""
    return holder.split(":", 1)[0]


def connect(psycopg: Any, url: str, attempt: float) -> Any:
    """A connection as every PostgreSQL user of ours opens it (the cluster lease, the task farm):
    autocommit, the simple protocol and no prepared statements (safe behind a transaction-mode
    pooler), and no round trip that hangs much longer than `attempt` seconds on a dead network:
    connect_timeout, TCP keepalives and tcp_user_timeout (unacknowledged data). Each statement
    carries its own statement_timeout (see `statement_timeout`). Raises psycopg.Error."""
    return psycopg.connect(
        url, autocommit=True, prepare_threshold=None, cursor_factory=psycopg.ClientCursor,
        connect_timeout=max(2, math.ceil(attempt)),  # libpq's floor is 2 s
        keepalives=1, keepalives_idle=max(1, int(attempt)), keepalives_interval=max(1, int(attempt / 3)),
        keepalives_count=3, tcp_user_timeout=int(attempt * 1000),
        application_name="watchdog-singleton")


def close_quietly(conn: Any) -> None:
    """Close a connection (the lease engine's, the farm store's) that may be broken already."""
    if conn is not None:
        try:
            conn.close()
        except Exception:  # closing a broken connection: nothing more to do  # noqa: BLE001
            pass


def statement_timeout(seconds: float) -> str:
    """The prefix that bounds the statement after it (in the same Query message, so the same
    implicit transaction: nothing is left set on the connection, which a pooler may share)."""
    return f"SET LOCAL statement_timeout = {max(1, int(seconds * 1000))};"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or exc.__class__.__name__
    return " ".join(text.splitlines()[0].split())


RENEW_ALL = """
WITH ask AS (
  SELECT * FROM unnest(%(names)s::text[], %(holders)s::text[], %(tokens)s::bigint[], %(ttls)s::float8[])
    AS a(name, holder, token, ttl)),
beat AS (
  INSERT INTO ws_host AS h (name, host, seen_at) SELECT name, %(host)s, now() FROM ask
  ON CONFLICT (name, host) DO UPDATE SET seen_at = now())
UPDATE ws_lease l SET renewed_at = now(), expires_at = now() + make_interval(secs => ask.ttl)
FROM ask
WHERE l.name = ask.name AND l.holder = ask.holder AND l.generation = ask.token AND l.expires_at > now()
RETURNING l.name, l.generation, l.expires_at
"""


class PostgresLink:
    """One connection to one database, opened on first use and again after any failure, with its
    round trips one at a time (a psycopg connection is not for concurrent use). A job's own
    supervisor has one per engine; the cluster house has one per database URL, shared by the
    engines of all its jobs there (`lease_for`), which also renews all their grants in one
    statement (`renew_all`)."""

    def __init__(self, url: str, attempt: float, host: Optional[str] = None) -> None:
        import _thread
        import os

        self.url = url
        self.attempt = attempt  # the connection's timeouts: the shortest round trip of its users
        self.host = host or os.uname().nodename
        self.psycopg = _driver()
        self.conn: Any = None
        self.lock = _thread.RLock()  # held for each round trip (and the schema's creation inside one)
        self.retune = False  # a user with a shorter round trip came: reconnect with its timeouts
        self.shared = False  # engines of several jobs use it (`lease_for`)

    def lease_for(self, timing: Timing, holder: Optional[str] = None) -> PostgresLease:
        """A job's engine whose round trips go over this connection (its close leaves it open)."""
        self.shared = True
        if timing.attempt < self.attempt:  # never waits for a round trip in flight (the house's loop calls this)
            self.attempt = timing.attempt
            self.retune = True  # reopened with the shorter timeouts at the next round trip
        return PostgresLease(self.url, timing, holder=holder, host=self.host, link=self)

    def connect(self) -> Any:
        if self.retune:
            self.retune = False
            self.drop()
        if self.conn is not None and not self.conn.closed:
            return self.conn
        psycopg = self.psycopg
        try:
            self.conn = connect(psycopg, self.url, self.attempt)
        except psycopg.Error as exc:
            raise LeaseUnavailable(f"cannot reach cluster database {redact(self.url)}: {_first_line(exc)}") from None
        return self.conn

    def execute(self, sql: str, params: dict[str, Any], attempt: float, create: bool = True,
                every: bool = False) -> list[tuple[Any, ...]]:
        """Run one statement (with its timeout) and return its rows (`every`) or its first row
        only; creates the schema on first use. Every driver error becomes LeaseUnavailable, and
        the connection is renewed."""
        self._take(attempt)
        try:
            return self._execute(sql, params, attempt, create, every)
        finally:
            self.lock.release()

    def _take(self, attempt: float) -> None:
        """The connection. Shared (the cluster house), within one round trip's time: another job's
        round trip in flight delays ours by at most that, and a queue of them (an outage, each
        connect timing out) fails ours as an outage would instead of holding up the house's loop."""
        if not self.shared:
            self.lock.acquire()  # one job's own: as psycopg's own lock would have it
        elif not self.lock.acquire(True, max(attempt, 0.001)):
            raise LeaseUnavailable(f"cluster database {redact(self.url)}: its connection stayed busy "
                                   f"for {attempt:g} s (another job's round trip)")

    def _execute(self, sql: str, params: dict[str, Any], attempt: float, create: bool,
                 every: bool) -> list[tuple[Any, ...]]:
        psycopg = self.psycopg
        timeout = statement_timeout(attempt)
        conn = self.connect()
        try:
            try:
                cur = conn.execute(timeout + sql, params)
            except psycopg.errors.UndefinedTable:
                if not create:
                    raise
                self.ensure_schema()
                cur = conn.execute(timeout + sql, params)
            cur.nextset()
            if not cur.description:
                return []
            rows: list[tuple[Any, ...]] = cur.fetchall() if every else [cur.fetchone()]
            return [row for row in rows if row is not None]
        except psycopg.errors.UndefinedTable:
            raise
        except psycopg.Error as exc:
            self.drop()
            raise LeaseUnavailable(f"cluster database {redact(self.url)}: {_first_line(exc)}") from None

    def rows(self, sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        psycopg = self.psycopg
        self._take(self.attempt)
        try:
            cur = self.connect().execute(sql, params)
            rows: list[tuple[Any, ...]] = cur.fetchall()
            return rows
        except psycopg.errors.UndefinedTable:
            return []
        except psycopg.Error as exc:
            self.drop()
            raise LeaseUnavailable(f"cluster database {redact(self.url)}: {_first_line(exc)}") from None
        finally:
            self.lock.release()

    def ensure_schema(self) -> None:
        """Create the tables if missing (one transaction, serialised); refuse a newer schema."""
        self._take(self.attempt)
        try:
            cur = self.connect().execute(SCHEMA)
            while cur.nextset():
                pass
            row = cur.fetchone()
        except self.psycopg.Error as exc:
            self.drop()
            raise LeaseUnavailable(f"cluster database {redact(self.url)}: cannot create the lease tables: "
                                   f"{_first_line(exc)}") from None
        finally:
            self.lock.release()
        version = int(row[0]) if row else 0
        if version != SCHEMA_VERSION:
            raise LeaseError(f"cluster database {redact(self.url)} has lease schema version {version}; "
                             f"this watchdog-singleton knows version {SCHEMA_VERSION}")

    def renew_all(self, asks: list[tuple[Grant, float]], attempt: float) -> dict[str, Grant]:
        """Renew every grant of `asks` (each with its lease's seconds) in one statement: the grants
        that came back, by name; a grant missing is lost (expired, released or taken). Raises
        LeaseUnavailable, and then nothing is known of any of them."""
        if not asks:
            return {}
        grants = {grant.name: grant for grant, _ in asks}
        params = {"names": [g.name for g, _ in asks], "holders": [g.holder for g, _ in asks],
                  "tokens": [g.token for g, _ in asks], "ttls": [float(ttl) for _, ttl in asks], "host": self.host}
        rows = self.execute(RENEW_ALL, params, attempt, every=True)
        renewed: dict[str, Grant] = {}
        for name, token, expires in rows:
            grant = grants.get(name)
            if grant is not None and grant.token == int(token):
                renewed[name] = Grant(name, grant.holder, grant.token, expires.isoformat())
        return renewed

    def drop(self) -> None:
        """Close the connection (it may be broken already); the next round trip opens another.
        Only with the connection taken (`_take`), or by its only user."""
        close_quietly(self.conn)
        self.conn = None


class PostgresLease:
    """ClusterLease on one PostgreSQL database, over a connection of its own or, in the cluster
    house, over one it shares with the other jobs there (`PostgresLink.lease_for`)."""

    def __init__(self, url: str, timing: Timing, holder: Optional[str] = None, host: Optional[str] = None,
                 link: Optional[PostgresLink] = None) -> None:
        self.url = url
        self.timing = timing
        self.holder = holder or holder_id()
        self.owns = link is None  # our own connection: `close` closes it; a shared one stays open
        self.link = link or PostgresLink(url, timing.attempt, host)
        self.host = self.link.host
        self.psycopg = self.link.psycopg
        self.seen_holder = ""  # after an acquire that got nothing: the host that holds the lease

    # -- the connection ---------------------------------------------------------------------
    def _connect(self) -> Any:
        return self.link.connect()

    def _execute(self, sql: str, params: dict[str, Any], create: bool = True) -> Optional[tuple[Any, ...]]:
        """Run one statement over the link and return its first row (see PostgresLink.execute)."""
        rows = self.link.execute(sql, params, self.timing.attempt, create)
        return rows[0] if rows else None

    def _rows(self, sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        return self.link.rows(sql, params)

    def ensure_schema(self) -> None:
        self.link.ensure_schema()

    def close(self) -> None:
        if self.owns:
            self.link.drop()

    # -- the lease ---------------------------------------------------------------------------
    def acquire(self, name: str) -> Optional[Grant]:
        row = self._execute(ACQUIRE, {"name": name, "holder": self.holder, "host": self.host,
                                      "ttl": self.timing.lease})
        if row is None or not row[2]:
            self.seen_holder = holder_host(row[3]) if row else ""
            return None
        self.seen_holder = self.host
        return Grant(name, self.holder, int(row[0]), row[1].isoformat())

    def renew(self, grant: Grant) -> Optional[Grant]:
        row = self._execute(RENEW, {"name": grant.name, "holder": grant.holder, "token": grant.token,
                                    "host": self.host, "ttl": self.timing.lease})
        if row is None:
            return None
        return Grant(grant.name, grant.holder, grant.token, row[1].isoformat())

    def release(self, grant: Grant) -> bool:
        row = self._execute(RELEASE, {"name": grant.name, "holder": grant.holder, "token": grant.token})
        return row is not None

    def check(self, name: str, token: int) -> bool:
        try:
            row = self._execute(CHECK, {"name": name, "token": token}, create=False)
        except self.psycopg.errors.UndefinedTable:
            return False  # no lease was ever granted here
        return bool(row and row[0])

    def status(self, name: str) -> Optional[LeaseInfo]:
        try:
            row = self._execute(STATUS, {"name": name}, create=False)
        except self.psycopg.errors.UndefinedTable:
            return None
        if row is None or (row[0] is None and row[5] is None):
            return None
        holder, token, expires, live, left, last_start, slot, now = row
        return LeaseInfo(name=name, holder=holder, token=token, expires_at=expires.isoformat() if expires else None,
                         live=bool(live), seconds_left=float(left or 0.0),
                         last_start=last_start.isoformat() if last_start else None, slot=slot,
                         now=now.isoformat())

    # -- periodic sync -----------------------------------------------------------------------
    def claim_slot(self, name: str, period: float) -> Optional[int]:
        if not math.isfinite(period) or period <= 0:
            raise UserError(f"sync period must be a positive number of seconds, not {period!r}", USAGE)
        row = self._execute(CLAIM_SLOT, {"name": name, "holder": self.holder, "period": period})
        return int(row[0]) if row else None

    # -- rotation ----------------------------------------------------------------------------
    def heartbeat(self, name: str) -> None:
        self._execute(HEARTBEAT, {"name": name, "host": self.host})

    def live_hosts(self, name: str, fresh: float) -> list[str]:
        return [row[0] for row in self._rows(LIVE_HOSTS, {"name": name, "fresh": fresh})]

    def pass_turn(self, name: str, fresh: float) -> str:
        """After a run here: give the turn to the next live host after this one; who has it now."""
        row = self._execute(PASS_TURN, {"name": name, "host": self.host, "fresh": fresh})
        assert row is not None
        return str(row[0])

    def whose_turn(self, name: str, fresh: float) -> Optional[str]:
        """The host whose turn it is: a stale one is skipped for the next live one after it; before
        any turn was passed, the first live host in name order; None when no host is live."""
        try:
            row = self._execute(WHOSE_TURN, {"name": name, "fresh": fresh}, create=False)
        except self.psycopg.errors.UndefinedTable:
            return None
        return str(row[0]) if row and row[0] is not None else None

    # -- status ------------------------------------------------------------------------------
    def overview(self, name: str, fresh: float) -> Optional[dict[str, Any]]:
        """Everything `status` shows of NAME in one round trip: the grant (holder, token, expiry,
        when it was taken), the last sync start, the hosts seen within `fresh` seconds and whose
        turn it is. None when NAME was never granted, synced nor seen."""
        sql = """
SELECT l.holder, l.generation, l.expires_at, coalesce(l.expires_at > now(), false),
  greatest(0, extract(epoch FROM l.expires_at - now()))::float8, l.acquired_at, s.last_start, s.generation,
  (SELECT coalesce(array_agg(h.host ORDER BY h.host), '{}') FROM ws_host h
   WHERE h.name = k.name AND h.seen_at > now() - make_interval(secs => %(fresh)s)),
  (WITH live AS (SELECT host FROM ws_host
                 WHERE name = k.name AND seen_at > now() - make_interval(secs => %(fresh)s)),
        turn AS (SELECT host FROM ws_turn WHERE name = k.name)
   SELECT coalesce((SELECT host FROM live WHERE host = (SELECT host FROM turn)),
                   (SELECT min(host) FROM live WHERE host > (SELECT host FROM turn)),
                   (SELECT min(host) FROM live))),
  EXISTS (SELECT 1 FROM ws_host WHERE name = k.name), now()
FROM (SELECT %(name)s::text AS name) k
LEFT JOIN ws_lease l ON l.name = k.name LEFT JOIN ws_sync s ON s.name = k.name
"""
        try:
            row = self._execute(sql, {"name": name, "fresh": fresh}, create=False)
        except self.psycopg.errors.UndefinedTable:
            return None  # no cluster job ever ran against this database
        if row is None:
            return None
        holder, token, expires, live, left, acquired, last_start, slot, hosts, turn, seen, now = row
        if token is None and last_start is None and not seen:
            return None

        def iso(value: Any) -> Optional[str]:
            return value.isoformat() if value is not None else None

        return {"holder": holder, "token": token, "expires_at": iso(expires), "live": bool(live),
                "seconds_left": round(float(left or 0.0), 3), "acquired_at": iso(acquired),
                "last_start": iso(last_start), "slot": slot, "hosts": list(hosts or []), "turn": turn,
                "now": iso(now)}
