"""Who the tests act as: the unprivileged test user (WATCHDOG_SINGLETON_TEST_USER, wstest).

Run in parallel (pytest -n 2), each worker is a test user of its own (wstest, wstestw1, ...), so
that their crontabs, lock folders, leftovers and database roles never meet. The choice goes into
the environment, so what a test starts (a nested pytest, a kit's script) acts as the same user.
"""

import os

_BASE = os.environ.get("WATCHDOG_SINGLETON_TEST_USER", "wstest")
_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")
_SUFFIX = "" if _WORKER in ("", "gw0") else f"w{_WORKER[2:]}"
TEST_USER = _BASE if _BASE.endswith(_SUFFIX) else _BASE + _SUFFIX
os.environ["WATCHDOG_SINGLETON_TEST_USER"] = TEST_USER
