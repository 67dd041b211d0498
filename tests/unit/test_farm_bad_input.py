"""Bad input to the farm's commands: one line naming the problem, exit 2, and nothing created or
changed (no work folder, no database, no row)."""

from __future__ import annotations

import os
from typing import Any

import pytest

from watchdog_singleton.commands import farm as farm_cmd
from watchdog_singleton.errors import USAGE, UserError
from watchdog_singleton.farm import tasklist
from watchdog_singleton.farm.store import FAILED_STATE
from watchdog_singleton.farm.store.sqlite import SqliteStore
from watchdog_singleton.farm.tasklist import Task


@pytest.fixture
def home(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("WATCHDOG_SINGLETON_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    return str(tmp_path)


def test_a_list_with_a_nul_byte_creates_no_work_folder(home: str) -> None:
    listing = os.path.join(home, "tasks.txt")
    with open(listing, "wb") as f:
        f.write(b"echo a\n# a comment may hold \0 anything\necho \0b\n")
    os.chmod(listing, 0o600)
    with pytest.raises(UserError) as caught:
        farm_cmd.run(farm_cmd.FarmRequest(tasklist=listing), print, print)
    assert caught.value.exit_code == USAGE
    assert str(caught.value) == "line 3 of the task list holds a NUL byte"
    assert not os.path.exists(listing + ".farm")


def test_a_nul_byte_in_a_comment_is_no_problem(home: str) -> None:
    listing = os.path.join(home, "tasks.txt")
    with open(listing, "wb") as f:
        f.write(b"# \0\n")
    os.chmod(listing, 0o600)
    tasklist.check_lines(listing)  # no error


def failed_task(home: str) -> str:
    workdir = os.path.join(home, "tasks.txt.farm")
    os.mkdir(workdir, 0o700)
    store = SqliteStore(os.path.join(workdir, "farm.sqlite"))
    store.add([Task("t-0", 1, "false")])
    (claim,) = store.claim("host/lock/1/a", 60, 1)
    assert store.fail(claim, 1, 0) == FAILED_STATE
    store.close()
    return workdir


def test_retry_of_an_id_no_task_has_is_refused(home: str) -> None:
    workdir = failed_task(home)
    with pytest.raises(UserError) as caught:
        farm_cmd.retry(workdir, None, ["t-0", "t-9"], print)
    assert caught.value.exit_code == USAGE
    assert str(caught.value) == f"no task t-9 in {workdir} (farm status lists them)"
    store = SqliteStore(os.path.join(workdir, "farm.sqlite"))
    assert store.stats()["failed"] == 1  # t-0 was not retried either
    store.close()


def test_retry_of_a_known_id_puts_it_back(home: str) -> None:
    workdir = failed_task(home)
    said: list[str] = []
    assert farm_cmd.retry(workdir, None, ["t-0"], said.append) == 0
    assert said == ["1 failed task(s) back to todo"]
