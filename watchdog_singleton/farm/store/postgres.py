"""The store in PostgreSQL: farms on several nodes share one list (`--db postgresql://...`).

The same states and rules as the SQLite store (see __init__.py, sqlite.py); claims use
`FOR UPDATE SKIP LOCKED`, so farms never wait on each other's rows, and every lease time is the
server's clock, so nodes whose clocks disagree still agree on when a lease ran out. One list
per database (or per user's search_path schema): the table is `farm_tasks`, and a farm uses it
only when it belongs to the user's role and no other role may insert or update its rows (a table
another role made first, in a schema everyone may create in, would run that role's tasks as us).

The connection is the cluster lease's (leases/postgres.connect): connect_timeout, TCP keepalives,
tcp_user_timeout and a statement_timeout on every statement, all from one attempt bound that
the farm's --lease sets, so a farm on a partitioned node fails a query instead of hanging in it.
A failure that may pass by itself (`is_transient`: the server down, restarting or failing over, a
network cut, a timeout) is a transient StoreError, which a running farm rides out (outage.py);
any other (a permission, a table, a constraint) stops it at once.
"""

from __future__ import annotations

from typing import Any, Iterable, Optional

from ...cluster import redact
from ...cluster.postgres import close_quietly, connect, statement_timeout
from ...errors import UserError
from ..tasklist import Task
from . import FAILED_STATE, FINISHED, LOST_LIMIT, STATES, TODO, Claim, Row, StoreError

NOW = "extract(epoch FROM clock_timestamp())::float8"  # every lease time is the server's clock
ADD_TIMEOUT = 60.0  # one batch of 5000 new tasks: a bulk statement, bounded more loosely than the rest

# Every statement of the PostgreSQL engine, by name (the same names as sqlite.py's
# where the step is the same). `%s` are parameters.
SQL = {
    "schema": """
CREATE TABLE IF NOT EXISTS farm_tasks (
    id text PRIMARY KEY,
    seq bigserial,
    line integer NOT NULL,
    command text NOT NULL,
    state text NOT NULL DEFAULT 'todo',
    attempts integer NOT NULL DEFAULT 0,
    failures integer NOT NULL DEFAULT 0,
    lost integer NOT NULL DEFAULT 0,
    gen integer NOT NULL DEFAULT 0,
    holder text,
    lease_expires float8,
    code integer,
    started float8,
    ended float8
);
CREATE INDEX IF NOT EXISTS farm_tasks_todo ON farm_tasks (state, seq);
""",
    # Two farms starting at once must not both create the table.
    "schema_lock": "SELECT pg_advisory_xact_lock(hashtext('watchdog_singleton.farm_tasks'))",
    # Whose table the farm found, and whether another role may put tasks in it (PUBLIC is grantee 0).
    "owner": """
SELECT pg_has_role(current_user, c.relowner, 'USAGE'), pg_get_userbyid(c.relowner), n.nspname,
  EXISTS (SELECT 1 FROM aclexplode(coalesce(c.relacl, acldefault('r', c.relowner))) a
          WHERE a.grantee <> c.relowner AND a.privilege_type IN ('INSERT', 'UPDATE')),
  current_user
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = to_regclass('farm_tasks')
""",
    "insert": "INSERT INTO farm_tasks (id, line, command) SELECT * FROM unnest(%s::text[], %s::int[], %s::text[]) "
              "ON CONFLICT (id) DO NOTHING",
    "claim": f"UPDATE farm_tasks SET state = 'running', holder = %s, gen = gen + 1, attempts = attempts + 1, "
             f"lease_expires = {NOW} + %s, started = {NOW}, ended = NULL, code = NULL "
             "WHERE id IN (SELECT id FROM farm_tasks WHERE state = 'todo' ORDER BY seq LIMIT %s "
             "FOR UPDATE SKIP LOCKED) RETURNING id, command, gen, attempts, seq",
    "heartbeat": f"UPDATE farm_tasks SET lease_expires = {NOW} + %s WHERE holder = %s AND state = 'running'",
    "holding": "SELECT id, gen FROM farm_tasks WHERE holder = %s AND state = 'running'",
    "finish": f"UPDATE farm_tasks SET state = 'finished', code = %s, ended = {NOW}, holder = NULL, "
              "lease_expires = NULL WHERE id = %s AND gen = %s AND state = 'running'",
    "fail": f"UPDATE farm_tasks SET state = CASE WHEN failures < %s THEN '{TODO}' ELSE '{FAILED_STATE}' END, "
            f"failures = failures + 1, code = %s, ended = {NOW}, holder = NULL, lease_expires = NULL "
            "WHERE id = %s AND gen = %s AND state = 'running' RETURNING state",
    "release": f"UPDATE farm_tasks SET state = 'todo', holder = NULL, lease_expires = NULL, ended = {NOW} "
               "WHERE id = %s AND gen = %s AND state = 'running'",
    "sweep": f"UPDATE farm_tasks SET state = CASE WHEN lost >= %s THEN '{FAILED_STATE}' ELSE '{TODO}' END, "
             f"lost = lost + 1, holder = NULL, lease_expires = NULL, ended = {NOW}, code = NULL "
             f"WHERE state = 'running' AND (lease_expires < {NOW} OR (%s::text IS NOT NULL "
             "AND starts_with(holder, %s::text) AND holder <> %s)) RETURNING id",
    "retry_one": "UPDATE farm_tasks SET state = 'todo', failures = 0, lost = 0 "
                 "WHERE state = 'failed' AND id = ANY(%s)",
    "retry_all": "UPDATE farm_tasks SET state = 'todo', failures = 0, lost = 0 WHERE state = 'failed'",
    "adopt": "UPDATE farm_tasks SET state = d.state FROM unnest(%s::text[], %s::text[]) AS d(id, state) "
             "WHERE farm_tasks.id = d.id AND farm_tasks.state = 'todo' AND farm_tasks.attempts = 0",
    "stats": "SELECT state, count(*) FROM farm_tasks GROUP BY state",
    "rows": "SELECT id, line, command, state, attempts, failures, holder, code, started, ended "
            "FROM farm_tasks ORDER BY seq",
}


# OperationalError's SQLSTATEs that asking again cannot change: a program limit (the same statement
# fails the same way) and the database dropped.
PERMANENT_CLASSES = ("54",)
PERMANENT_STATES = ("57P04",)
# Outside OperationalError: a connection that reached a standby (a failover under way) refuses writes.
TRANSIENT_STATES = ("25006",)


def is_transient(psycopg: Any, exc: BaseException) -> bool:
    """Whether the server may answer again in a moment: psycopg's OperationalError (the connection
    refused, closed or lost, no SQLSTATE; a server shutting down or starting, 57P0x; a statement
    timeout or lock wait, 57014, 55P03; a serialization failure or deadlock, 40xxx; too many
    connections or a full disk on the server, 53xxx), not a refusal of what we asked (42xxx: a
    permission, a missing table; 23xxx: a constraint), which stays the same however often we ask."""
    state = getattr(exc, "sqlstate", None) or ""
    if state in TRANSIENT_STATES:
        return True
    if not isinstance(exc, psycopg.OperationalError):
        return False
    return not (state.startswith(PERMANENT_CLASSES) or state in PERMANENT_STATES)


def attempt_for(lease: float) -> float:
    """The longest one round trip may take, from the farm's --lease (the cluster lease's rule,
    Timing.for_lease, with a floor of 1 s: a farm's statements are bulkier than a renew)."""
    return max(1.0, min(5.0, lease / 12))


class PgStore:
    def __init__(self, url: str, lease: float = 60.0) -> None:
        try:
            import psycopg
        except ImportError:
            from ...paths import psycopg_hint

            raise UserError(f"--db postgresql://... needs psycopg: {psycopg_hint()}") from None
        self.psycopg = psycopg
        self.url = url
        self.attempt = attempt_for(lease)
        self.timeout = statement_timeout(self.attempt)
        self.conn: Any = None
        try:
            db = self._connect()
            with db.transaction():
                db.execute(SQL["schema_lock"])
                row = db.execute(SQL["owner"]).fetchone()  # before touching it: it may be someone else's
                if row is None or row[0]:
                    db.execute(SQL["schema"])
                    row = db.execute(SQL["owner"]).fetchone()
        except psycopg.Error as exc:
            raise self._failed(exc, "cannot use the farm database") from None
        mine, role, schema, shared, me = row
        if not mine:
            self.close()
            raise UserError(f"farm table {schema}.farm_tasks in {redact(url)} belongs to role {role}, not to "
                            f"you ({me}): refusing to run its tasks")
        if shared:
            self.close()
            raise UserError(f"farm table {schema}.farm_tasks in {redact(url)} can be written by other roles: "
                            f"refusing to run its tasks; REVOKE INSERT, UPDATE ON {schema}.farm_tasks FROM ...")

    def _connect(self) -> Any:
        if self.conn is None or self.conn.closed:
            self.conn = connect(self.psycopg, self.url, self.attempt)
        return self.conn

    def _failed(self, exc: BaseException, what: str = "farm database") -> StoreError:
        """The one-line error; the connection is dropped and opened again by the next call."""
        self.close()
        text = str(exc).strip() or exc.__class__.__name__
        reason = " ".join(text.splitlines()[0].split())
        where = f"database {redact(self.url)}"
        return StoreError(f"{what} {redact(self.url)}: {reason}", transient=is_transient(self.psycopg, exc),
                          where=where, reason=reason)

    def _q(self, sql: str, params: tuple[Any, ...] = ()) -> Any:
        """One statement under the statement timeout; its cursor, positioned on its result."""
        try:
            cur = self._connect().execute(self.timeout + sql, params)
            cur.nextset()
            return cur
        except self.psycopg.Error as exc:
            raise self._failed(exc) from None

    def add(self, tasks: Iterable[Task]) -> int:
        added = 0
        batch: list[tuple[str, int, str]] = []
        try:
            db = self._connect()
            with db.transaction(), db.cursor() as cur:
                cur.execute(statement_timeout(max(ADD_TIMEOUT, self.attempt)))
                for task in tasks:
                    batch.append((task.id, task.line, task.command))
                    if len(batch) >= 5000:
                        added += self._insert(cur, batch)
                        batch = []
                added += self._insert(cur, batch)
        except self.psycopg.Error as exc:
            raise self._failed(exc) from None
        return added

    @staticmethod
    def _insert(cur: Any, batch: list[tuple[str, int, str]]) -> int:
        if not batch:
            return 0
        ids, lines, commands = zip(*batch)
        cur.execute(SQL["insert"], (list(ids), list(lines), list(commands)))
        return int(cur.rowcount)

    def claim(self, holder: str, lease: float, limit: int) -> list[Claim]:
        rows = self._q(SQL["claim"], (holder, lease, limit)).fetchall()
        return [Claim(r[0], r[1], r[2], r[3]) for r in sorted(rows, key=lambda r: r[4])]

    def heartbeat(self, holder: str, lease: float) -> int:
        return int(self._q(SQL["heartbeat"], (lease, holder)).rowcount)

    def holding(self, holder: str) -> set[tuple[str, int]]:
        return {(r[0], int(r[1])) for r in self._q(SQL["holding"], (holder,)).fetchall()}

    def finish(self, claim: Claim, code: int) -> bool:
        return bool(self._q(SQL["finish"], (code, claim.id, claim.gen)).rowcount == 1)

    def fail(self, claim: Claim, code: int, retries: int) -> str:
        row = self._q(SQL["fail"], (retries, code, claim.id, claim.gen)).fetchone()
        return str(row[0]) if row else ""

    def release(self, claim: Claim) -> bool:
        return bool(self._q(SQL["release"], (claim.id, claim.gen)).rowcount == 1)

    def sweep(self, dead_holder_prefix: Optional[str] = None, alive: Optional[str] = None) -> list[str]:
        rows = self._q(SQL["sweep"], (LOST_LIMIT, dead_holder_prefix, dead_holder_prefix, alive or "")).fetchall()
        return [r[0] for r in rows]

    def retry(self, ids: Iterable[str] = ()) -> int:
        wanted = list(ids)
        if wanted:
            return int(self._q(SQL["retry_one"], (wanted,)).rowcount)
        return int(self._q(SQL["retry_all"]).rowcount)

    def adopt(self, done: Iterable[tuple[str, str]]) -> int:
        pairs = [(tid, state) for tid, state in done if state in (FINISHED, FAILED_STATE)]
        if not pairs:
            return 0
        ids, states = zip(*pairs)
        return int(self._q(SQL["adopt"], (list(ids), list(states))).rowcount)

    def stats(self) -> dict[str, int]:
        counts = dict.fromkeys(STATES, 0)
        for state, n in self._q(SQL["stats"]).fetchall():
            counts[state] = int(n)
        return counts

    def rows(self) -> list[Row]:
        return [Row(*r) for r in self._q(SQL["rows"]).fetchall()]

    def close(self) -> None:
        close_quietly(self.conn)
        self.conn = None
