"""Which PostgreSQL errors a running farm rides out (transient: the server may answer again in a
moment) and which stop it at once (asking again cannot change them): farm/store/postgres.py's
is_transient, on psycopg's own exception classes."""

from __future__ import annotations

import importlib.util

import pytest

if importlib.util.find_spec("psycopg") is None:
    pytest.skip("needs psycopg", allow_module_level=True)

import psycopg
from psycopg import errors

from watchdog_singleton.farm.store.postgres import is_transient


@pytest.mark.parametrize("error", [
    psycopg.OperationalError("connection failed: Connection refused"),  # no SQLSTATE: never reached
    psycopg.OperationalError("the connection is closed"),
    psycopg.OperationalError("consuming input failed: server closed the connection unexpectedly"),
    errors.AdminShutdown("terminating connection due to administrator command"),  # pg_ctl stop -m fast
    errors.CrashShutdown("terminating connection because of crash of another server process"),
    errors.CannotConnectNow("the database system is starting up"),
    errors.QueryCanceled("canceling statement due to statement timeout"),
    errors.TooManyConnections("sorry, too many clients already"),
    errors.SerializationFailure("could not serialize access"),
    errors.ReadOnlySqlTransaction("cannot execute UPDATE in a read-only transaction"),  # a failover under way
], ids=lambda e: type(e).__name__ + ":" + str(e)[:20])
def test_a_server_that_may_answer_again_is_transient(error: Exception) -> None:
    assert is_transient(psycopg, error)


@pytest.mark.parametrize("error", [
    errors.InsufficientPrivilege("permission denied for table farm_tasks"),
    errors.UndefinedTable('relation "farm_tasks" does not exist'),
    errors.UniqueViolation("duplicate key value violates unique constraint"),
    errors.ProgramLimitExceeded("statement is too complex"),
    errors.DatabaseDropped("database dropped"),
    psycopg.ProgrammingError("query has no results"),
], ids=lambda e: type(e).__name__)
def test_a_refusal_asking_again_cannot_change_is_permanent(error: Exception) -> None:
    assert not is_transient(psycopg, error)
