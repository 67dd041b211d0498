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
through Guarded, which turns it into a stop instead.
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
    removed, unreachable. The message is one line; the exit code is STORAGE_FAILED."""

    def __init__(self, message: str) -> None:
        super().__init__(message, STORAGE_FAILED)


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
    """The store as a farm's loop uses it: a StoreError is handed once to `on_error` (which stops
    the farm) instead of raised, and the call answers "nothing": no claim, no lease renewed, no
    result recorded, the last counts seen. A result that could not be recorded (finish, fail,
    release: each applies only to the attempt it names, so a second try is harmless) is tried
    again before each later call and by `settle`; what is still unrecorded then runs again in
    the next farm."""

    RESULTS = ("finish", "fail", "release")
    READS = ("stats", "rows")

    def __init__(self, store: Store, on_error: Callable[[str], None]) -> None:
        self.store = store
        self.on_error = on_error
        self.counts = dict.fromkeys(STATES, 0)
        self.unrecorded: list[tuple[str, tuple[Any, ...]]] = []

    def _call(self, name: str, args: tuple[Any, ...], default: Any) -> Any:
        try:
            if name not in self.READS:
                self._replay()
            return getattr(self.store, name)(*args)
        except StoreError as exc:
            if name in self.RESULTS:
                self.unrecorded.append((name, args))
            self.on_error(str(exc))
            return default

    def _replay(self) -> None:
        while self.unrecorded:
            name, args = self.unrecorded[0]
            getattr(self.store, name)(*args)
            self.unrecorded.pop(0)

    def settle(self) -> int:
        """Try the unrecorded results once more; how many are still unrecorded."""
        try:
            self._replay()
        except StoreError:
            pass
        return len(self.unrecorded)

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
        """How many leases were renewed; -1 when the store failed (nothing was renewed, and the
        failure already stops the farm)."""
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
