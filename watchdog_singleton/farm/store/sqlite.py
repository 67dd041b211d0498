"""The farm's store in one SQLite file on a local disk: the engine for one host, the default
(the interface, the states and the rules: __init__.py).

Lease times are CLOCK_BOOTTIME, the clock of the farm's own give-up deadline (lease.py): every
farm that shares the file runs on this host, and a step of the wall clock (NTP, `date -s`) must
not make live leases run out, nor a dead farm's last longer. That clock restarts at each boot:
the `meta` table names the boot the leases were written in, and leases of an earlier boot (whose
farms are all dead) have run out; a database of a version that kept them on the wall clock has
them moved to this clock once. `started` and `ended` stay on the wall clock, for people."""

from __future__ import annotations

import os
import sqlite3
import time
from typing import Callable, Iterable, Optional

from ...proc.procs import boot_id
from .. import place
from ..nursery import boottime
from ..tasklist import Task
from . import FAILED_STATE, FINISHED, LOST_LIMIT, STATES, TODO, Claim, Row, StoreError

SQLITE_NAME = "farm.sqlite"
SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")  # SQLite makes these beside the database
BUSY_TIMEOUT = 10.0  # how long a write waits for someone else's lock before the database counts as failed
BUSY_TIMEOUT_FAILING = 1.0  # once it failed: what is left (recording results) must not wait 10 s each


# Every statement of the SQLite engine, by name (postgres.py has its own dialect's, under the same
# names where the step is the same). `?` are parameters.
SQL = {
    "schema": """
CREATE TABLE IF NOT EXISTS tasks (
    id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    line INTEGER NOT NULL,
    command TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'todo',
    attempts INTEGER NOT NULL DEFAULT 0,
    failures INTEGER NOT NULL DEFAULT 0,
    lost INTEGER NOT NULL DEFAULT 0,
    gen INTEGER NOT NULL DEFAULT 0,
    holder TEXT,
    lease_expires REAL,
    code INTEGER,
    started REAL,
    ended REAL
);
CREATE INDEX IF NOT EXISTS tasks_todo ON tasks (state, seq);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
""",
    "lease_clock": "SELECT value FROM meta WHERE key = 'lease_clock'",
    "stamp": "INSERT OR REPLACE INTO meta (key, value) VALUES ('lease_clock', ?)",
    "shift_leases": "UPDATE tasks SET lease_expires = lease_expires + ? WHERE lease_expires IS NOT NULL",
    "end_leases": "UPDATE tasks SET lease_expires = 0 WHERE lease_expires IS NOT NULL",
    "last_seq": "SELECT coalesce(max(seq), 0) FROM tasks",
    "insert": "INSERT OR IGNORE INTO tasks (id, seq, line, command) VALUES (?, ?, ?, ?)",
    "claimable": "SELECT id, command, gen, attempts FROM tasks WHERE state = 'todo' ORDER BY seq LIMIT ?",
    "claim": "UPDATE tasks SET state = 'running', holder = ?, gen = gen + 1, attempts = attempts + 1, "
             "lease_expires = ?, started = ?, ended = NULL, code = NULL WHERE id = ? AND state = 'todo'",
    "heartbeat": "UPDATE tasks SET lease_expires = ? WHERE holder = ? AND state = 'running'",
    "holding": "SELECT id, gen FROM tasks WHERE holder = ? AND state = 'running'",
    "finish": "UPDATE tasks SET state = 'finished', code = ?, ended = ?, holder = NULL, lease_expires = NULL "
              "WHERE id = ? AND gen = ? AND state = 'running'",
    "failures": "SELECT failures FROM tasks WHERE id = ? AND gen = ? AND state = 'running'",
    "fail": "UPDATE tasks SET state = ?, failures = failures + 1, code = ?, ended = ?, holder = NULL, "
            "lease_expires = NULL WHERE id = ? AND gen = ?",
    "release": "UPDATE tasks SET state = 'todo', holder = NULL, lease_expires = NULL, ended = ? "
               "WHERE id = ? AND gen = ? AND state = 'running'",
    "lost": "SELECT id, lost, failures FROM tasks WHERE state = 'running' AND (lease_expires < ? "
            "OR (? IS NOT NULL AND substr(holder, 1, length(?)) = ? AND holder != ?))",
    "sweep": "UPDATE tasks SET state = ?, lost = lost + 1, holder = NULL, lease_expires = NULL, ended = ?, "
             "code = NULL WHERE id = ?",
    "retry_one": "UPDATE tasks SET state = 'todo', failures = 0, lost = 0 WHERE id = ? AND state = 'failed'",
    "retry_all": "UPDATE tasks SET state = 'todo', failures = 0, lost = 0 WHERE state = 'failed'",
    "adopt": "UPDATE tasks SET state = ? WHERE id = ? AND state = 'todo' AND attempts = 0",
    "stats": "SELECT state, count(*) FROM tasks GROUP BY state",
    "rows": "SELECT id, line, command, state, attempts, failures, holder, code, started, ended FROM tasks "
            "ORDER BY seq",
}


class SqliteStore:
    """The store in one SQLite file on a local disk (WAL: `farm status` reads while the farm writes)."""

    def __init__(self, path: str, clock: Callable[[], float] = boottime, wall: Callable[[], float] = time.time,
                 boot: Callable[[], str] = boot_id) -> None:
        self.path = path
        self.clock = clock  # leases: CLOCK_BOOTTIME
        self.wall = wall  # started, ended
        self.boot = boot
        self.stamped = False  # the leases are known to be on this boot's clock
        self.identity: Optional[tuple[int, int]] = None  # (st_dev, st_ino) of the file we opened
        if path != ":memory:":
            check_sqlite_files(path)
            try:
                # Made 0600 by us before SQLite opens it: SQLite gives its -wal and -shm the
                # database's mode, so all three are private whatever the umask.
                fd = place.open_private(path, os.O_RDONLY | os.O_CREAT, "farm database")
            except OSError as exc:
                raise StoreError(f"cannot open the farm database {path}: {exc.strerror}") from None
            st = os.fstat(fd)
            os.close(fd)
            self.identity = (st.st_dev, st.st_ino)
        old_umask = os.umask(0o077)  # and a -wal/-shm SQLite creates cannot be readable by others anyway
        try:
            # isolation_level=None: we open every transaction ourselves (BEGIN IMMEDIATE takes the
            # write lock up front, so two writers never both read 'todo' and claim the same row).
            self.db = sqlite3.connect(path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: safe against a killed process
            self.db.executescript(SQL["schema"])
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the farm database {path}: {exc}") from None
        finally:
            os.umask(old_umask)
        if self.identity is not None:
            for suffix in SQLITE_SIDE_FILES:  # ours and 0600, also when an older farm made them 0644
                place.make_private(path + suffix, "farm database file")

    def _write(self) -> "_Tx":
        return _Tx(self, "BEGIN IMMEDIATE")

    def _on_this_boot(self) -> None:
        """Inside a write, before this process reads or writes a lease: the leases on this boot's
        CLOCK_BOOTTIME (see the module's docstring). `stamped` is set once that write committed."""
        if self.stamped:
            return
        stamp = f"boottime {self.boot()}"
        row = self.db.execute(SQL["lease_clock"]).fetchone()
        if row is None:  # written by a version that kept them on the wall clock: the same moments here
            self.db.execute(SQL["shift_leases"], (self.clock() - self.wall(),))
        elif row[0] != stamp:  # an earlier boot's: their farms are dead
            self.db.execute(SQL["end_leases"])
        if row is None or row[0] != stamp:
            self.db.execute(SQL["stamp"], (stamp,))

    def _read(self) -> "_Tx":
        return _Tx(self, "")

    def failed(self, exc: BaseException) -> StoreError:
        """The one-line error for a failed statement; later statements wait less for a lock."""
        try:
            self.db.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_FAILING * 1000)}")
        except sqlite3.Error:
            pass
        reason = " ".join(str(exc).split()) or exc.__class__.__name__
        if "locked" in reason or "busy" in reason:
            reason += f" (someone holds a lock on it or its -wal/-shm for over {BUSY_TIMEOUT:g} s)"
        return StoreError(f"farm database {self.path}: {reason}")

    def _still_there(self) -> None:
        """SQLite goes on writing into a database file that was removed: notice it instead."""
        if self.identity is None:
            return
        try:
            st = os.stat(self.path)
            here = (st.st_dev, st.st_ino) == self.identity
        except OSError:
            here = False
        if not here:
            raise StoreError(f"farm database {self.path} was removed or replaced while the farm ran")

    def add(self, tasks: Iterable[Task]) -> int:
        added = 0
        batch: list[tuple[str, int, str]] = []
        with self._write():
            seq = self.db.execute(SQL["last_seq"]).fetchone()[0]
            for task in tasks:
                batch.append((task.id, task.line, task.command))
                if len(batch) >= 5000:
                    added += self._insert(batch, seq + added)
                    batch = []
            added += self._insert(batch, seq + added)
        return added

    def _insert(self, batch: list[tuple[str, int, str]], seq: int) -> int:
        before = self.db.total_changes
        self.db.executemany(SQL["insert"], [(tid, seq + i + 1, line, cmd)
                                            for i, (tid, line, cmd) in enumerate(batch)])
        return self.db.total_changes - before

    def claim(self, holder: str, lease: float, limit: int) -> list[Claim]:
        self._still_there()
        with self._write():
            self._on_this_boot()
            now, wall = self.clock(), self.wall()
            rows = self.db.execute(SQL["claimable"], (limit,)).fetchall()
            self.db.executemany(SQL["claim"], [(holder, now + lease, wall, r[0]) for r in rows])
        self.stamped = True
        return [Claim(r[0], r[1], r[2] + 1, r[3] + 1) for r in rows]

    def heartbeat(self, holder: str, lease: float) -> int:
        self._still_there()
        with self._write():
            self._on_this_boot()
            renewed: int = self.db.execute(SQL["heartbeat"], (self.clock() + lease, holder)).rowcount
        self.stamped = True
        return renewed

    def holding(self, holder: str) -> set[tuple[str, int]]:
        """(id, gen) of the tasks `holder` runs now: after a heartbeat renewed fewer, which were taken."""
        return {(r[0], r[1]) for r in self.db.execute(SQL["holding"], (holder,))}

    def finish(self, claim: Claim, code: int) -> bool:
        with self._write():
            return self.db.execute(SQL["finish"], (code, self.wall(), claim.id, claim.gen)).rowcount == 1

    def fail(self, claim: Claim, code: int, retries: int) -> str:
        """Record a failed attempt; the task goes back to todo while it has retries left.
        Returns the task's new state, or '' if the claim was no longer ours."""
        with self._write():
            row = self.db.execute(SQL["failures"], (claim.id, claim.gen)).fetchone()
            if row is None:
                return ""
            state = TODO if row[0] < retries else FAILED_STATE
            self.db.execute(SQL["fail"], (state, code, self.wall(), claim.id, claim.gen))
        return state

    def release(self, claim: Claim) -> bool:
        """Back to todo without counting a failure: the farm stopped it (SIGUSR1, --timeout)."""
        with self._write():
            return self.db.execute(SQL["release"], (self.wall(), claim.id, claim.gen)).rowcount == 1

    def sweep(self, dead_holder_prefix: Optional[str] = None, alive: Optional[str] = None) -> list[str]:
        """Running tasks whose lease ran out (or whose holder starts with `dead_holder_prefix` and
        is not `alive`: farms of this host that our host lock proves dead) go back to todo."""
        with self._write():
            self._on_this_boot()
            now, wall = self.clock(), self.wall()
            rows = self.db.execute(SQL["lost"], (now, dead_holder_prefix, dead_holder_prefix, dead_holder_prefix,
                                                 alive or "")).fetchall()
            for tid, lost, _failures in rows:
                state = FAILED_STATE if lost >= LOST_LIMIT else TODO
                self.db.execute(SQL["sweep"], (state, wall, tid))
        self.stamped = True
        return [r[0] for r in rows]

    def retry(self, ids: Iterable[str] = ()) -> int:
        wanted = list(ids)
        with self._write():
            if wanted:
                return sum(self.db.execute(SQL["retry_one"], (tid,)).rowcount for tid in wanted)
            return self.db.execute(SQL["retry_all"]).rowcount

    def adopt(self, done: Iterable[tuple[str, str]]) -> int:
        """(id, finished|failed) of tasks that ran to their end elsewhere (a PyTaskFarmer campaign
        taken over): todo tasks never run here take that state, with attempts left at 0, which is
        how status tells them apart. Returns how many changed."""
        with self._write():
            before = self.db.total_changes
            self.db.executemany(SQL["adopt"], [(state, tid) for tid, state in done
                                               if state in (FINISHED, FAILED_STATE)])
            return self.db.total_changes - before

    def stats(self) -> dict[str, int]:
        counts = dict.fromkeys(STATES, 0)
        with self._read():
            for state, n in self.db.execute(SQL["stats"]):
                counts[state] = n
        return counts

    def rows(self) -> list[Row]:
        with self._read():
            return [Row(*r) for r in self.db.execute(SQL["rows"])]

    def close(self) -> None:
        self.db.close()



class _Tx:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on an exception; a database error in any of it
    becomes the store's StoreError. `begin=""`: statements outside a transaction (reads)."""

    def __init__(self, store: SqliteStore, begin: str) -> None:
        self.store = store
        self.db = store.db
        self.begin = begin

    def __enter__(self) -> None:
        if self.begin:
            try:
                self.db.execute(self.begin)
            except sqlite3.Error as exc:
                raise self.store.failed(exc) from None

    def __exit__(self, kind: Optional[type[BaseException]], exc: Optional[BaseException], _tb: object) -> None:
        if kind is None:
            if not self.begin:
                return
            try:
                self.db.execute("COMMIT")
                return
            except sqlite3.Error as error:  # SQLITE_FULL, an I/O error: the transaction may still be open
                exc = error
        if self.db.in_transaction:
            try:
                self.db.execute("ROLLBACK")
            except sqlite3.Error:
                pass
        if isinstance(exc, sqlite3.Error):
            raise self.store.failed(exc) from None


def sqlite_path(db: Optional[str], workdir: str) -> str:
    path = db[len("sqlite://"):] if db and db.startswith("sqlite://") else db
    return path or os.path.join(workdir, SQLITE_NAME)


def check_sqlite_files(path: str) -> None:
    """Refuse (exit 2) a database, or its folder, -wal, -shm or -journal, that is not ours alone."""
    folder = os.path.dirname(os.path.abspath(path))
    place.check(folder, "folder of the farm database", folder=True)
    place.check(path, "farm database")
    for suffix in SQLITE_SIDE_FILES:
        place.check(path + suffix, "farm database file")
