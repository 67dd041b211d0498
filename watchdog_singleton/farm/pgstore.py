"""The store in PostgreSQL: farms on several nodes share one list (`--db postgresql://...`).

The same states and rules as the SQLite store (see store.py); claims use
`FOR UPDATE SKIP LOCKED`, so farms never wait on each other's rows, and every lease time is the
server's clock, so nodes whose clocks disagree still agree on when a lease ran out. One list
per database (or per user's search_path schema): the table is `farm_tasks`.
"""

from __future__ import annotations

from typing import Any, Iterable, Optional

from ..errors import FAILED, UserError
from .store import FAILED_STATE, FINISHED, LOST_LIMIT, STATES, TODO, Claim, Row
from .tasklist import Task

NOW = "extract(epoch FROM clock_timestamp())::float8"
_SCHEMA = """
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
"""


class PgStore:
    def __init__(self, url: str) -> None:
        try:
            import psycopg
        except ImportError:
            raise UserError("--db postgresql://... needs psycopg: pip install 'watchdog-singleton[postgres]'",
                            FAILED) from None
        self.errors = psycopg.Error
        try:
            self.db: Any = psycopg.connect(url, autocommit=True, connect_timeout=10)
            with self.db.transaction():
                # Two farms starting at once must not both create the table.
                self.db.execute("SELECT pg_advisory_xact_lock(hashtext('watchdog_singleton.farm_tasks'))")
                self.db.execute(_SCHEMA)
        except psycopg.Error as exc:
            raise UserError(f"cannot use the farm database: {str(exc).strip().splitlines()[0]}", FAILED) from None

    def add(self, tasks: Iterable[Task]) -> int:
        added = 0
        batch: list[tuple[str, int, str]] = []
        with self.db.transaction(), self.db.cursor() as cur:
            for task in tasks:
                batch.append((task.id, task.line, task.command))
                if len(batch) >= 5000:
                    added += self._insert(cur, batch)
                    batch = []
            added += self._insert(cur, batch)
        return added

    @staticmethod
    def _insert(cur: Any, batch: list[tuple[str, int, str]]) -> int:
        if not batch:
            return 0
        ids, lines, commands = zip(*batch)
        cur.execute("INSERT INTO farm_tasks (id, line, command) SELECT * FROM unnest(%s::text[], %s::int[], "
                    "%s::text[]) ON CONFLICT (id) DO NOTHING", (list(ids), list(lines), list(commands)))
        return int(cur.rowcount)

    def claim(self, holder: str, lease: float, limit: int) -> list[Claim]:
        rows = self.db.execute(
            f"UPDATE farm_tasks SET state = 'running', holder = %s, gen = gen + 1, attempts = attempts + 1, "
            f"lease_expires = {NOW} + %s, started = {NOW}, ended = NULL, code = NULL "
            "WHERE id IN (SELECT id FROM farm_tasks WHERE state = 'todo' ORDER BY seq LIMIT %s "
            "FOR UPDATE SKIP LOCKED) RETURNING id, command, gen, attempts, seq",
            (holder, lease, limit)).fetchall()
        return [Claim(r[0], r[1], r[2], r[3]) for r in sorted(rows, key=lambda r: r[4])]

    def heartbeat(self, holder: str, lease: float) -> int:
        return int(self.db.execute(f"UPDATE farm_tasks SET lease_expires = {NOW} + %s "
                                   "WHERE holder = %s AND state = 'running'", (lease, holder)).rowcount)

    def holding(self, holder: str) -> set[tuple[str, int]]:
        return {(r[0], int(r[1])) for r in self.db.execute(
            "SELECT id, gen FROM farm_tasks WHERE holder = %s AND state = 'running'", (holder,)).fetchall()}

    def finish(self, claim: Claim, code: int) -> bool:
        return bool(self.db.execute(
            f"UPDATE farm_tasks SET state = 'finished', code = %s, ended = {NOW}, holder = NULL, "
            "lease_expires = NULL WHERE id = %s AND gen = %s AND state = 'running'",
            (code, claim.id, claim.gen)).rowcount == 1)

    def fail(self, claim: Claim, code: int, retries: int) -> str:
        row = self.db.execute(
            f"UPDATE farm_tasks SET state = CASE WHEN failures < %s THEN '{TODO}' ELSE '{FAILED_STATE}' END, "
            f"failures = failures + 1, code = %s, ended = {NOW}, holder = NULL, lease_expires = NULL "
            "WHERE id = %s AND gen = %s AND state = 'running' RETURNING state",
            (retries, code, claim.id, claim.gen)).fetchone()
        return str(row[0]) if row else ""

    def release(self, claim: Claim) -> bool:
        return bool(self.db.execute(
            f"UPDATE farm_tasks SET state = 'todo', holder = NULL, lease_expires = NULL, ended = {NOW} "
            "WHERE id = %s AND gen = %s AND state = 'running'", (claim.id, claim.gen)).rowcount == 1)

    def sweep(self, dead_holder_prefix: Optional[str] = None, alive: Optional[str] = None) -> list[str]:
        rows = self.db.execute(
            f"UPDATE farm_tasks SET state = CASE WHEN lost >= %s THEN '{FAILED_STATE}' ELSE '{TODO}' END, "
            f"lost = lost + 1, holder = NULL, lease_expires = NULL, ended = {NOW}, code = NULL "
            f"WHERE state = 'running' AND (lease_expires < {NOW} OR (%s::text IS NOT NULL "
            "AND starts_with(holder, %s::text) AND holder <> %s)) RETURNING id",
            (LOST_LIMIT, dead_holder_prefix, dead_holder_prefix, alive or "")).fetchall()
        return [r[0] for r in rows]

    def retry(self, ids: Iterable[str] = ()) -> int:
        wanted = list(ids)
        if wanted:
            return int(self.db.execute("UPDATE farm_tasks SET state = 'todo', failures = 0, lost = 0 "
                                       "WHERE state = 'failed' AND id = ANY(%s)", (wanted,)).rowcount)
        return int(self.db.execute("UPDATE farm_tasks SET state = 'todo', failures = 0, lost = 0 "
                                   "WHERE state = 'failed'").rowcount)

    def adopt(self, done: Iterable[tuple[str, str]]) -> int:
        pairs = [(tid, state) for tid, state in done if state in (FINISHED, FAILED_STATE)]
        if not pairs:
            return 0
        ids, states = zip(*pairs)
        return int(self.db.execute(
            "UPDATE farm_tasks SET state = d.state FROM unnest(%s::text[], %s::text[]) AS d(id, state) "
            "WHERE farm_tasks.id = d.id AND farm_tasks.state = 'todo' AND farm_tasks.attempts = 0",
            (list(ids), list(states))).rowcount)

    def stats(self) -> dict[str, int]:
        counts = dict.fromkeys(STATES, 0)
        for state, n in self.db.execute("SELECT state, count(*) FROM farm_tasks GROUP BY state"):
            counts[state] = int(n)
        return counts

    def rows(self) -> list[Row]:
        return [Row(*r) for r in self.db.execute(
            "SELECT id, line, command, state, attempts, failures, holder, code, started, ended "
            "FROM farm_tasks ORDER BY seq")]

    def close(self) -> None:
        self.db.close()
