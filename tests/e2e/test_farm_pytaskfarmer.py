"""Coming from PyTaskFarmer: a campaign's work folder taken over (its finished and failed tasks are
not run again), the notice when one sits beside the list, and lines that only a shell can run.

The campaign is made by the real PyTaskFarmer 0.1.0, installed into a venv of its own when pip
can fetch it; otherwise its files are written exactly as it writes them (format read from its
source: `ID COMMAND` lines, the ID a task's index among the list's non-comment, non-blank lines).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from typing import Any, Iterator, Optional

import pytest
from conftest import Sandbox

from watchdog_singleton.farm import pytaskfarmer, tasklist

PTF_VERSION = "0.1.0"
# A task PyTaskFarmer can run (it splits a line on spaces, no shell): note its name, exit as told.
MARK = '#!/bin/sh\necho "$1" >> out\nexit "${2:-0}"\n'
# PyTaskFarmer runs the first four and records them (b fails), then dies on `cd sub` (no such
# program): a campaign stopped part way, as a user moving over would have it.
CAMPAIGN = ["# a campaign begun with PyTaskFarmer", "./mark a", "./mark b 3", "", "./mark c", "./mark a", "cd sub"]
# What PyTaskFarmer 0.1.0 leaves for CAMPAIGN (IDs count task lines only: `cd sub` is 4, not 7).
WRITTEN = {"finished": "0 ./mark a\n2 ./mark c\n3 ./mark a\n", "failed": "1 ./mark b 3\n", "toprocess": "4 cd sub\n"}


@pytest.fixture(scope="module")
def real_pytaskfarmer() -> Iterator[Optional[list[str]]]:
    """The real PyTaskFarmer's command, from a throwaway venv; None when pip cannot fetch it here."""
    base = tempfile.mkdtemp(prefix="ws-test-ptf-")
    os.chmod(base, 0o755)
    venv = os.path.join(base, "venv")
    python = os.path.join(venv, "bin", "python")
    try:
        subprocess.run(["/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable, "-m", "venv",
                        venv], check=True, capture_output=True, timeout=120)
        subprocess.run([python, "-m", "pip", "install", "-q", "--disable-pip-version-check",
                        f"pytaskfarmer=={PTF_VERSION}"], check=True, capture_output=True, timeout=300)
        subprocess.run(["chmod", "-R", "a+rX", base], check=True)
        script = os.path.join(venv, "bin", "pytaskfarmer.py")
        yield [python, script] if os.path.exists(script) else None
    except (OSError, subprocess.SubprocessError):
        yield None
    finally:
        shutil.rmtree(base, ignore_errors=True)


def write(box: Sandbox, name: str, text: str, mode: int = 0o644) -> str:
    path = box.path(name)
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, mode)
    os.chown(path, box.user.uid, box.user.gid)
    return path


def write_list(box: Sandbox, lines: list[str]) -> str:
    return write(box, "tasks.txt", "".join(f"{line}\n" for line in lines))


def write_campaign(box: Sandbox, listing: str, files: dict[str, str]) -> str:
    """A PyTaskFarmer work folder in its format, as the test user's (what a real run leaves)."""
    folder = box.mkdir(os.path.basename(pytaskfarmer.default_folder(listing)))
    box.mkdir(folder, "logs")
    for name, text in {**files, "lock": "", "timeline.json": "[]"}.items():
        write(box, os.path.join(folder, name), text)
    return folder


def farm(box: Sandbox, *args: str) -> subprocess.CompletedProcess[str]:
    return box.ws("farm", *args)


def status(box: Sandbox, listing: str) -> dict[str, Any]:
    proc = farm(box, "status", listing, "--json")
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def marks(box: Sandbox) -> list[str]:
    with open(box.path("out")) as f:
        return f.read().split()


def by_command(st: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {t["command"]: t for t in st["tasks"]}


# -- in process: PyTaskFarmer's numbering and the matching -----------------------------------

def test_records_match_by_pytaskfarmer_index_and_command_not_by_line_number() -> None:
    lines = ["# comment", "echo a", "", "echo b", "echo a", "echo c"]
    commands = pytaskfarmer.ptf_tasks_of(f"{line}\n" for line in lines)
    assert commands == ["echo a", "echo b", "echo a", "echo c"]
    ours = {t.line: t.id for t in tasklist.parse(f"{line}\n" for line in lines)}
    campaign = pytaskfarmer.Campaign("w", finished={0: "echo a", 2: "echo a", 3: "echo c"}, failed={1: "echo b"},
                                     toprocess=set(), malformed=0)
    done, unmatched = pytaskfarmer.match(campaign, commands)
    assert dict(done) == {ours[2]: "finished", ours[5]: "finished", ours[6]: "finished", ours[4]: "failed"}
    assert unmatched == 0


def test_an_edited_list_still_matches_commands_that_occur_once_and_nothing_else() -> None:
    # Recorded against ["echo a", "echo b", "echo a"]; since then a line was inserted on top.
    commands = ["echo new", "echo a", "echo b", "echo a"]
    campaign = pytaskfarmer.Campaign("w", finished={0: "echo a", 1: "echo b", 2: "echo a"}, failed={},
                                     toprocess=None, malformed=0)
    done, unmatched = pytaskfarmer.match(campaign, commands)
    ids = {t.command + str(t.line): t.id for t in tasklist.parse(f"{c}\n" for c in commands)}
    # `echo b` (once in the list) is itself; ID 2 is `echo b` now, not `echo a`; ID 0 is `echo new`:
    # the two `echo a` records cannot be told apart, so those tasks run again.
    assert done == [(ids["echo b3"], "finished")]
    assert unmatched == 2


def test_a_half_written_record_is_ignored_and_finished_wins_over_failed(tmp_path: Any) -> None:
    folder = str(tmp_path)
    (tmp_path / "finished").write_text("0 echo a\n1 echo b\n2 ech")
    (tmp_path / "failed").write_text("1 echo b\nnot a record\n")
    campaign = pytaskfarmer.read(folder)
    assert campaign.finished == {0: "echo a", 1: "echo b"} and campaign.failed == {1: "echo b"}
    assert campaign.malformed == 2 and campaign.toprocess is None
    done, _ = pytaskfarmer.match(campaign, ["echo a", "echo b", "echo c"])
    assert sorted(state for _, state in done) == ["finished", "finished"]


def test_lines_that_begin_with_a_builtin_or_an_assignment_go_to_a_shell() -> None:
    assert tasklist.argv("exit 3") == ["/bin/sh", "-c", "exit 3"]
    assert tasklist.argv("cd sub") == ["/bin/sh", "-c", "cd sub"]
    assert tasklist.argv("ulimit -v 100000 && ./big")[:2] == ["/bin/sh", "-c"]
    assert tasklist.argv("FOO=1 env") == ["/bin/sh", "-c", "FOO=1 env"]
    if os.path.exists("/bin/bash"):
        assert tasklist.argv("source env.sh && ./run") == ["/bin/bash", "-c", "source env.sh && ./run"]
    assert tasklist.argv("echo exit 3") == ["echo", "exit", "3"]  # only the first word counts
    assert tasklist.argv("./exit 3") == ["./exit", "3"]


# -- real farms as the test user ----------------------------------------------------------

def test_a_pytaskfarmer_campaign_is_taken_over_and_its_finished_and_failed_tasks_do_not_rerun(
        sandbox: Sandbox, real_pytaskfarmer: Optional[list[str]]) -> None:
    write(sandbox, "mark", MARK, 0o755)
    listing = write_list(sandbox, CAMPAIGN)
    folder = pytaskfarmer.default_folder(listing)
    if real_pytaskfarmer:
        sandbox.run_as([*real_pytaskfarmer, "--proc", "1", "tasks.txt"])
        for name in ("finished", "failed"):  # what the real one wrote is what we say it writes
            with open(os.path.join(folder, name)) as f:
                assert f.read() == WRITTEN[name]
        assert os.path.isfile(os.path.join(folder, "logs", "log_0"))
    else:
        write_campaign(sandbox, listing, WRITTEN)
        write(sandbox, "out", "a\nb\nc\na\n")
    assert marks(sandbox) == ["a", "b", "c", "a"]
    # The user moves over mid-campaign: `cd sub` can run now, and the list grows.
    sandbox.mkdir("sub")
    listing = write_list(sandbox, [*CAMPAIGN, "./mark d", "exit 3", "FOO=1 ./mark e"])

    proc = farm(sandbox, listing, "--from-pytaskfarmer", folder, "--workers", "2")
    assert proc.returncode == 1, proc.stderr  # the list is done, and some failed (b there, exit 3 here)
    assert "3 finished and 1 failed task(s) recorded, not to run again" in proc.stderr, proc.stderr
    assert "PyTaskFarmer's work folder for this list" not in proc.stderr  # no notice: it is taken over
    assert marks(sandbox)[:4] == ["a", "b", "c", "a"]
    assert sorted(marks(sandbox)[4:]) == ["d", "e"]  # only what PyTaskFarmer did not end ran here

    st = status(sandbox, listing)
    assert st["counts"] == {"todo": 0, "running": 0, "finished": 6, "failed": 2}
    assert st["imported"]["pytaskfarmer"] == {"from": [os.path.abspath(folder)], "finished": 3, "failed": 1}
    tasks = by_command(st)
    assert (tasks["./mark b 3"]["state"], tasks["./mark b 3"]["from"], tasks["./mark b 3"]["attempts"]) == \
        ("failed", "pytaskfarmer", 0)
    assert sorted(t["from"] for t in st["tasks"] if t["command"] == "./mark a") == ["pytaskfarmer"] * 2
    assert (tasks["cd sub"]["state"], tasks["cd sub"]["from"]) == ("finished", "farm")
    assert (tasks["exit 3"]["state"], tasks["exit 3"]["code"]) == ("failed", 3)
    table = farm(sandbox, "status", listing)
    assert "imported from pytaskfarmer" in table.stdout and "imported  ./mark b 3" in table.stdout, table.stdout

    again = farm(sandbox, listing, "--from-pytaskfarmer", folder)  # taking over twice changes nothing
    assert again.returncode == 1, again.stderr
    assert sorted(marks(sandbox)) == ["a", "a", "b", "c", "d", "e"]


def test_a_pytaskfarmer_folder_beside_the_list_is_noticed_in_one_line(sandbox: Sandbox) -> None:
    listing = write_list(sandbox, ["echo a >> out", "echo b >> out"])
    folder = write_campaign(sandbox, listing, {"finished": "0 echo a >> out\n", "toprocess": "1 echo b >> out\n"})
    proc = farm(sandbox, listing)
    assert proc.returncode == 0, proc.stderr
    noticed = [line for line in proc.stderr.splitlines() if "PyTaskFarmer" in line]
    assert len(noticed) == 1, proc.stderr
    assert os.path.basename(folder) in noticed[0] and f"--from-pytaskfarmer {folder}" in noticed[0]
    assert "1 finished, 0 failed" in noticed[0]
    assert sorted(marks(sandbox)) == ["a", "b"]  # without the option the list runs as it is


def test_a_taken_over_folder_is_not_noticed_again(sandbox: Sandbox) -> None:
    listing = write_list(sandbox, ["echo a >> out", "echo b >> out"])
    folder = write_campaign(sandbox, listing, {"finished": "0 echo a >> out\n"})
    first = farm(sandbox, listing, "--from-pytaskfarmer", folder)
    assert first.returncode == 0, first.stderr
    assert marks(sandbox) == ["b"]
    write_list(sandbox, ["echo a >> out", "echo b >> out", "echo c >> out"])
    second = farm(sandbox, listing)
    assert second.returncode == 0 and "PyTaskFarmer" not in second.stderr, second.stderr
    assert marks(sandbox) == ["b", "c"]


def test_lines_only_a_shell_can_run_run_through_sh(sandbox: Sandbox) -> None:
    write(sandbox, "env.sh", "X=from-env-sh\n")
    sandbox.mkdir("sub")
    lines = ["exit 3", "cd /tmp && pwd", "FOO=1 env", "cd sub", "source ./env.sh && echo $X"]
    listing = write_list(sandbox, lines)
    proc = farm(sandbox, listing)
    assert proc.returncode == 1, proc.stderr
    tasks = by_command(status(sandbox, listing))
    assert (tasks["exit 3"]["state"], tasks["exit 3"]["code"]) == ("failed", 3)  # not 127, "No such file"
    for line in lines[1:]:
        assert (tasks[line]["state"], tasks[line]["code"]) == ("finished", 0), tasks[line]

    def log(line: str) -> str:
        with open(os.path.join(f"{listing}.farm", "logs", f"{tasks[line]['id']}.log")) as f:
            return f.read()

    assert "/tmp\n" in log("cd /tmp && pwd")
    assert "FOO=1\n" in log("FOO=1 env")
    if os.path.exists("/bin/bash"):
        assert "from-env-sh\n" in log("source ./env.sh && echo $X")


@pytest.mark.parametrize("make,needle", [
    ("missing", "does not exist"),
    ("empty", "is not a PyTaskFarmer work folder"),
    ("anyone-writes", "anyone may write it"),
])
def test_a_bad_pytaskfarmer_folder_is_refused_with_one_line_and_nothing_created(sandbox: Sandbox, make: str,
                                                                               needle: str) -> None:
    listing = write_list(sandbox, ["echo never >> out"])
    folder = sandbox.path("campaign")
    if make == "empty":
        sandbox.mkdir("campaign")
    elif make == "anyone-writes":
        folder = write_campaign(sandbox, listing, {"finished": "0 echo never >> out\n"})
        os.chmod(os.path.join(folder, "finished"), 0o666)
    before = sorted(os.listdir(sandbox.dir))
    proc = farm(sandbox, listing, "--from-pytaskfarmer", folder)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and needle in lines[0] and lines[0].startswith("watchdog-singleton: "), proc.stderr
    assert sorted(os.listdir(sandbox.dir)) == before
