"""Where the farm's tasks live: todo -> running (a lease) -> finished | failed.

One small interface (here), two engines: SQLite in the work folder (one host; the default;
sqlite.py) and PostgreSQL (many hosts, `--db postgresql://...`; postgres.py); factory.py opens the
one `--db` names, and is the only module that knows both. Neither engine imports the other, and
this package's __init__ imports neither. Both are held to tests/contract/test_farm_store_contract.py.
Every change of state is one transaction, and a running task is named by (id, gen): `gen` grows
at each claim, so a farm whose lease ran out can never finish or fail a task that another farm
holds now.

A lease runs out when its farm stops renewing it (SIGKILL, a node gone); `sweep` puts such
tasks back to todo, counting the attempt as lost. A task lost more than LOST_LIMIT times
beyond its retries (it keeps killing its node) is failed instead.

A database that fails (locked by someone for BUSY_TIMEOUT, a full disk, a read-only folder,
removed, unreachable) raises StoreError: one line, exit STORAGE_FAILED (74). A farm meets it
through Guarded, which turns it into a stop instead, or, when the error is `transient` (a
PostgreSQL that does not answer for now: refused, dropped, timed out), into an outage the farm
rides out (outage.py).
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, NamedTuple, Optional, Protocol

from ...errors import STORAGE_FAILED, UserError
from ..tasklist import Task

TODO, RUNNING, FINISHED, FAILED_STATE = "todo", "running", "finished", "failed"
STATES = (TODO, RUNNING, FINISHED, FAILED_STATE)
LOST_LIMIT = 3


class StoreError(UserError):
    """The farm's database failed it: locked by someone else, a full disk, a read-only folder,
    removed, unreachable. The message is one line; the exit code is STORAGE_FAILED.
    `transient`: the database may answer again in a moment (a connection refused, dropped or
    timed out), as opposed to a refusal that asking again cannot change (a permission, a table,
    a constraint); `where` names the database and `reason` is what it said, for the outage's line."""

    def __init__(self, message: str, transient: bool = False, where: str = "", reason: str = "") -> None:
        super().__init__(message, STORAGE_FAILED)
        self.transient = transient
        self.where = where or "database"
        self.reason = reason or str(self)


class Claim(NamedTuple):
    id: str
    command: str
    gen: int
    attempt: int  # 1 for a task's first run


class Row(NamedTuple):
    id: str
    line: int
    command: str
    state: str
    attempts: int
    failures: int
    holder: Optional[str]
    code: Optional[int]
    started: Optional[float]
    ended: Optional[float]


class Store(Protocol):
    """What the farm needs of a store; `holder` names one farm (host/pid/nonce)."""

    def add(self, tasks: Iterable[Task]) -> int: ...
    def claim(self, holder: str, lease: float, limit: int) -> list[Claim]: ...
    def heartbeat(self, holder: str, lease: float) -> int: ...
    def holding(self, holder: str) -> set[tuple[str, int]]: ...
    def finish(self, claim: Claim, code: int) -> bool: ...
    def fail(self, claim: Claim, code: int, retries: int) -> str: ...
    def release(self, claim: Claim) -> bool: ...
    def sweep(self, dead_holder_prefix: Optional[str] = None, alive: Optional[str] = None) -> list[str]: ...
    def retry(self, ids: Iterable[str] = ()) -> int: ...
    def adopt(self, done: Iterable[tuple[str, str]]) -> int: ...
    def stats(self) -> dict[str, int]: ...
    def rows(self) -> list[Row]: ...
    def close(self) -> None: ...


class Guarded:
    """The store as a farm's loop uses it: a StoreError is handed to `on_error` (which stops
    the farm) instead of raised, and the call answers "nothing": no claim, no lease renewed, no
    result recorded, the last counts seen. A result that could not be recorded (finish, fail,
    release: each applies only to the attempt it names, so a second try is harmless) is tried
    again before each later call and by `settle`; what is still unrecorded then runs again in
    the next farm.

    A transient StoreError (given `on_outage`) starts an outage instead: the store is `down`,
    and until a heartbeat (the farm's probe, at the outage's cadence) goes through, no other
    call reaches the database (each would wait out its own timeout): they answer "nothing" at
    once and results are kept. The first heartbeat that goes through records what was kept
    first (in order), and `on_back` is told how many it recorded."""

    RESULTS = ("finish", "fail", "release")
    READS = ("stats", "rows")
    PROBE = "heartbeat"

    def __init__(self, store: Store, on_error: Callable[[str], None],
                 on_outage: Optional[Callable[[StoreError], None]] = None,
                 on_back: Optional[Callable[[int], None]] = None) -> None:
        self.store = store
        self.on_error = on_error
        self.on_outage = on_outage
        self.on_back = on_back
        self.down = False
        self.replayed = 0  # results kept and recorded since the outage began
        self.counts = dict.fromkeys(STATES, 0)
        self.unrecorded: list[tuple[str, tuple[Any, ...]]] = []

    def _call(self, name: str, args: tuple[Any, ...], default: Any) -> Any:
        if self.down and name != self.PROBE:
            if name in self.RESULTS:
                self.unrecorded.append((name, args))
            return default
        try:
            if name not in self.READS:
                self._replay()
            answer = getattr(self.store, name)(*args)
        except StoreError as exc:
            if name in self.RESULTS:
                self.unrecorded.append((name, args))
            if exc.transient and self.on_outage is not None:
                if not self.down:
                    self.down, self.replayed = True, 0
                    self.on_outage(exc)
            else:
                self.on_error(str(exc))
            return default
        if self.down:
            self.down = False
            if self.on_back is not None:
                self.on_back(self.replayed)
        return answer

    def _replay(self) -> None:
        while self.unrecorded:
            name, args = self.unrecorded[0]
            getattr(self.store, name)(*args)
            self.unrecorded.pop(0)
            self.replayed += 1

    def settle(self) -> int:
        """Try the unrecorded results once more (during an outage too); how many are still unrecorded."""
        try:
            self._replay()
        except StoreError:
            pass
        return len(self.unrecorded)

    def kept(self, claim: Claim) -> bool:
        """Whether a result for `claim` waits to be recorded (the database did not answer)."""
        return any(args[0] == claim for _name, args in self.unrecorded)

    def __getattr__(self, name: str) -> Any:
        # A store method without a guarded twin below is passed through: its StoreError ends the
        # farm (one line, exit 74; Farm.run still stops its tasks' trees) without the stop path.
        return getattr(self.store, name)

    def add(self, tasks: Iterable[Task]) -> int:
        return int(self._call("add", (tasks,), 0))

    def claim(self, holder: str, lease: float, limit: int) -> list[Claim]:
        claims: list[Claim] = self._call("claim", (holder, lease, limit), [])
        return claims

    def heartbeat(self, holder: str, lease: float) -> int:
        """How many leases were renewed; -1 when the store failed (nothing was renewed: the
        failure stops the farm, or the outage goes on). During an outage, the probe."""
        return int(self._call("heartbeat", (holder, lease), -1))

    def holding(self, holder: str) -> Optional[set[tuple[str, int]]]:
        """The (id, gen) pairs `holder` runs now, or None when the store failed."""
        held: Optional[set[tuple[str, int]]] = self._call("holding", (holder,), None)
        return held

    def finish(self, claim: Claim, code: int) -> bool:
        return bool(self._call("finish", (claim, code), False))

    def fail(self, claim: Claim, code: int, retries: int) -> str:
        return str(self._call("fail", (claim, code, retries), ""))

    def release(self, claim: Claim) -> bool:
        return bool(self._call("release", (claim,), False))

    def sweep(self, dead_holder_prefix: Optional[str] = None, alive: Optional[str] = None) -> list[str]:
        swept: list[str] = self._call("sweep", (dead_holder_prefix, alive), [])
        return swept

    def retry(self, ids: Iterable[str] = ()) -> int:
        return int(self._call("retry", (ids,), 0))

    def stats(self) -> dict[str, int]:
        counts: dict[str, int] = self._call("stats", (), None) or self.counts
        self.counts = counts
        return counts

    def rows(self) -> list[Row]:
        rows: list[Row] = self._call("rows", (), [])
        return rows

    def close(self) -> None:
        self.store.close()
