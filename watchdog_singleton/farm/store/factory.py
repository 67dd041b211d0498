"""Which store `--db` names: the one place that knows both engines (sqlite.py, postgres.py; the
interface is __init__.py), so that neither engine module imports the other.
"""

from __future__ import annotations

import os
from typing import Optional

from ...errors import UserError
from . import Store
from .sqlite import SqliteStore, check_sqlite_files, sqlite_path


def is_postgres(db: Optional[str]) -> bool:
    return bool(db) and str(db).startswith(("postgresql://", "postgres://"))


def check_place(db: Optional[str], workdir: str) -> None:
    """Refuse a SQLite database on a network file system, or not ours alone, before anything is created."""
    if is_postgres(db):
        from ...cluster.postgres import url_problem

        problem = url_problem(str(db))
        if problem:
            raise UserError(problem.replace("cluster ", "--db ", 1))
        return
    path = sqlite_path(db, workdir)
    if path == ":memory:":
        return
    check_sqlite_files(path)
    from ...lock.flock import filesystem_type

    fs = filesystem_type(path)
    if fs:
        raise UserError(f"the farm database {path} would be on {fs}: SQLite's locking is not safe there; "
                        "use a --workdir (or --db FILE) on a local disk, or --db postgresql://...")


def open_store(db: Optional[str], workdir: str, create: bool = True, lease: float = 60.0) -> Store:
    """The store `--db` names: a postgresql:// URL, a SQLite file (FILE or sqlite://FILE), or by
    default farm.sqlite in the work folder; SQLite is refused on a network file system, and a
    database, or folder, that is not the user's alone is refused everywhere."""
    if is_postgres(db):
        from .postgres import PgStore

        assert db is not None
        store: Store = PgStore(db, lease=lease)
        return store
    check_place(db, workdir)
    path = sqlite_path(db, workdir)
    if not create and path != ":memory:" and not os.path.exists(path):
        raise UserError(f"no farm in {workdir}: {path} does not exist")
    return SqliteStore(path)
