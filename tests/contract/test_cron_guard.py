"""The suite's cron guard (conftest.cron_guard): a test that is not about cron leaves no line the
real cron daemon fires at the next minute boundary, in the middle of it.

The guard itself runs around every test; these check that it says what it should: the lines it
counts, the schedule the sandbox gives an install, and, in a pytest run of its own as the test
user, that it fails an unmarked test that leaves a `* * * * *` line and passes a marked one.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from typing import Any

import pytest
from conftest import HERE, KITS, QUIET_SCHEDULE, TEST_USER, every_minute_lines, quiet_install


def test_every_minute_lines_are_the_enabled_lines_with_five_stars() -> None:
    crontab = (b"MAILTO=me\n* * * * * a #watchdog-singleton:a\n#disabled * * * * * b #watchdog-singleton:b\n"
               b"  # * * * * * c\n*  *\t* * * d\n*/1 * * * * e\n@reboot f\n0 0 1 1 * g\n* * * * 0 h\n")
    assert every_minute_lines(crontab) == [b"* * * * * a #watchdog-singleton:a", b"*  *\t* * * d"]


@pytest.mark.parametrize("args, expected", [
    (("install", "web", "--", "/bin/sleep", "1"),
     ("install", "--schedule", QUIET_SCHEDULE, "web", "--", "/bin/sleep", "1")),
    (("install", "web", "--no-start", "/bin/true"),
     ("install", "--schedule", QUIET_SCHEDULE, "web", "--no-start", "/bin/true")),
    # The command's own words are not install's options.
    (("install", "web", "--", "/bin/app", "--every", "5"),
     ("install", "--schedule", QUIET_SCHEDULE, "web", "--", "/bin/app", "--every", "5")),
])
def test_an_install_gets_the_quiet_schedule(args: tuple[str, ...], expected: tuple[str, ...]) -> None:
    assert quiet_install(args) == expected


@pytest.mark.parametrize("args", [
    ("install", "web", "--schedule", "*/5 * * * *", "--", "/bin/true"),
    ("install", "web", "--schedule=@daily", "--", "/bin/true"),
    ("install", "web", "--every", "5", "--", "/bin/true"),
    ("install", "web", "--periodic", "--", "/bin/true"),
    ("install", "--help"),
    ("status", "web"),
    (),
])
def test_an_install_that_chooses_its_schedule_or_kind_and_other_commands_are_left_alone(
        args: tuple[str, ...]) -> None:
    assert quiet_install(args) == args


PROBE = '''
import pytest

def leave_a_line(sandbox):
    sandbox.set_crontab(sandbox.crontab() + b"* * * * * /bin/true #cron-guard-probe\\n")

def test_unmarked(sandbox):
    leave_a_line(sandbox)

@pytest.mark.cron_ticks
def test_marked(sandbox):
    leave_a_line(sandbox)

def test_quiet(sandbox):
    name = sandbox.job("quiet")
    sandbox.ok("install", name, "--no-start", "--", "/bin/true")
    assert sandbox.cron_line(name).startswith("@reboot ")
'''


def test_the_guard_fails_an_unmarked_test_that_leaves_an_every_minute_line(tmp_path: Any) -> None:
    if os.getuid() != 0:
        pytest.skip("needs root: the probe runs as the test user")
    probe = tmp_path / "test_probe.py"
    probe.write_text(textwrap.dedent(PROBE))
    # The suite's conftest, loaded as a plugin, in a pytest run of its own.
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "conftest",
                           "-o", "markers=cron_ticks", "--rootdir", str(tmp_path), str(probe)],
                          capture_output=True, text=True, timeout=300, cwd=str(tmp_path),
                          env=dict(os.environ, PYTHONPATH=os.pathsep.join((HERE, KITS)),
                                   WATCHDOG_SINGLETON_TEST_USER=TEST_USER))
    out = proc.stdout
    assert proc.returncode == 1, out + proc.stderr
    assert "3 passed, 1 error" in out, out  # test_unmarked passes, then errs at its teardown
    assert "ERROR at teardown of test_unmarked" in out and "#cron-guard-probe" in out, out
