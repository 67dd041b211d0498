"""apply and export for real, as the test user: what apply changes (only what the file says,
restarting only what must restart), and a bad file changes nothing. (Parsing and its errors as
plain calls: tests/unit/test_config_parse.py.)"""

from __future__ import annotations

import os
import re

import pytest
from conftest import QUIET_SCHEDULE, Sandbox, pids_with_arg, wait_for

SLEEP = "import time; time.sleep(10**6)"


def sleeper(name: str) -> str:
    """A command whose argv holds the marker m-NAME (NAME alone is in the supervisor's argv too)."""
    return f'command = ["/usr/bin/python3", "-c", "{SLEEP}", "m-{name}"]\n'


def write_file(box: Sandbox, text: str, name: str = "jobs.toml", quiet: bool = True) -> str:
    """The file, with [defaults] of quick starts and (`quiet`) a schedule cron does not fire mid-test."""
    path = box.path(name)
    with open(path, "w") as fh:
        quiet_line = f'schedule = "{QUIET_SCHEDULE}"\n' if quiet else ""
        fh.write("[defaults]\nsettle = 0.3\ngrace = 2\n" + quiet_line + "\n" + text)
    os.chown(path, box.user.uid, box.user.gid)
    return path


def pid_of(box: Sandbox, name: str) -> int:
    marker = f"m-{name}"
    pids = wait_for(lambda: pids_with_arg(marker, box.user.uid), 10, what=f"{marker} to run")
    assert len(pids) == 1, pids
    return int(pids[0])


def snapshot(box: Sandbox) -> tuple[bytes, dict[str, bytes]]:
    jobs_dir = os.path.join(box.state_root, "jobs")
    files = {}
    if os.path.isdir(jobs_dir):
        for name in sorted(os.listdir(jobs_dir)):
            with open(os.path.join(jobs_dir, name), "rb") as fh:
                files[name] = fh.read()
    return box.crontab(), files


def plan_of(output: str) -> dict[str, str]:
    rows = {}
    for line in output.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] in ("create", "update", "restart", "remove", "unchanged"):
            rows[parts[1]] = parts[0]
    return rows


def test_apply_twice_changes_nothing_the_second_time(sandbox: Sandbox) -> None:
    a, b = sandbox.job("a"), sandbox.job("b")
    path = write_file(sandbox, f"[jobs.{a}]\n{sleeper(a)}\n[jobs.{b}]\n{sleeper(b)}enable = false\n")
    first = sandbox.ok("apply", path)
    assert plan_of(first.stdout) == {a: "create", b: "create"}
    pid = pid_of(sandbox, a)
    assert pids_with_arg(f"m-{b}", sandbox.user.uid) == []  # enable = false: installed, not started
    assert sandbox.status(b)["installed"] and not sandbox.status(b)["enabled"]
    before = snapshot(sandbox)
    second = sandbox.ok("apply", path)
    assert plan_of(second.stdout) == {a: "unchanged", b: "unchanged"}
    assert "nothing to change" in second.stdout
    assert snapshot(sandbox) == before
    assert pids_with_arg(f"m-{a}", sandbox.user.uid) == [pid] and pids_with_arg(f"m-{b}", sandbox.user.uid) == []


@pytest.mark.cron_ticks  # a period is its own schedule (every minute in the crontab); all its jobs run
def test_export_then_apply_is_a_no_op(sandbox: Sandbox) -> None:
    a, p, hand = sandbox.job("a"), sandbox.job("p"), sandbox.job("hand")
    sandbox.ok("install", hand, "--grace", "4", "--env", "K=v w", "--", "/usr/bin/python3", "-c", SLEEP, f"m-{hand}")
    path = write_file(sandbox, f"[jobs.{a}]\n{sleeper(a)}restart = \"on-failure\"\nlog_backups = 5\n"
                               f"[jobs.{p}]\ncommand = \"/bin/true\"\nperiod = 120\ntimeout = 30\nenable = false\n",
                      quiet=False)
    sandbox.ok("apply", path)
    pids = (pid_of(sandbox, a), pid_of(sandbox, hand))
    exported = sandbox.ok("export").stdout
    assert f"[jobs.{a}]" in exported and "period = 120" in exported
    before = snapshot(sandbox)
    out = write_file(sandbox, "", "exported.toml", quiet=False)
    with open(out, "w") as fh:
        fh.write(exported)
    again = sandbox.ok("apply", out)
    assert plan_of(again.stdout) == {a: "unchanged", p: "unchanged", hand: "unchanged"}, again.stdout
    assert snapshot(sandbox) == before
    assert (pid_of(sandbox, a), pid_of(sandbox, hand)) == pids
    assert sandbox.ok("export", a).stdout.count("command = ") == 1
    assert sandbox.ws("export", "nope").returncode == 4


def test_apply_of_a_changed_file_restarts_only_the_job_whose_command_changed(sandbox: Sandbox) -> None:
    a, b, c = sandbox.job("a"), sandbox.job("b"), sandbox.job("c")
    text = f"[jobs.{a}]\n{sleeper(a)}\n[jobs.{b}]\n{sleeper(b)}\n[jobs.{c}]\n{sleeper(c)}\n"
    path = write_file(sandbox, text)
    sandbox.ok("apply", path)
    pids = {n: pid_of(sandbox, n) for n in (a, b, c)}
    write_file(sandbox, text.replace(f'"m-{a}"]', f'"m-{a}", "v2"]').replace(
        f'"m-{b}"]\n', f'"m-{b}"]\ngrace = 7\nschedule = "*/2 * * * *"\n'))
    before = snapshot(sandbox)
    dry = sandbox.ok("apply", path, "--dry-run")
    assert plan_of(dry.stdout) == {a: "restart", b: "update", c: "unchanged"}, dry.stdout
    assert re.search(rf"update\s+{re.escape(b)}\s+schedule, grace", dry.stdout), dry.stdout
    assert snapshot(sandbox) == before and {n: pid_of(sandbox, n) for n in (a, b, c)} == pids
    sandbox.ok("apply", path)
    assert pids_with_arg(f"m-{a}", sandbox.user.uid) != [pids[a]] and pid_of(sandbox, a) != pids[a]
    assert pid_of(sandbox, b) == pids[b] and pid_of(sandbox, c) == pids[c]
    assert sandbox.status(b)["schedule"] == "*/2 * * * *"
    assert sandbox.cron_line(b).startswith("*/2 * * * * ")
    assert plan_of(sandbox.ok("apply", path).stdout) == {a: "unchanged", b: "unchanged", c: "unchanged"}


def test_a_job_dropped_from_the_file_is_uninstalled_but_hand_installed_and_other_files_jobs_are_kept(
        sandbox: Sandbox) -> None:
    x, y, hand, other = sandbox.job("x"), sandbox.job("y"), sandbox.job("hand"), sandbox.job("other")
    sandbox.ok("install", hand, "--settle", "0.3", "--", "/usr/bin/python3", "-c", SLEEP, f"m-{hand}")
    sandbox.ok("apply", write_file(sandbox, f"[jobs.{other}]\n{sleeper(other)}", "other.toml"))
    path = write_file(sandbox, f"[jobs.{x}]\n{sleeper(x)}\n[jobs.{y}]\n{sleeper(y)}")
    sandbox.ok("apply", path)
    pid_of(sandbox, y)
    write_file(sandbox, f"[jobs.{x}]\n{sleeper(x)}")
    out = sandbox.ok("apply", path).stdout
    assert plan_of(out) == {x: "unchanged", y: "remove"}, out
    assert pids_with_arg(f"m-{y}", sandbox.user.uid) == []
    assert f"#watchdog-singleton:{y}" not in sandbox.crontab().decode()
    assert sandbox.status(hand)["installed"]
    assert sandbox.ws("status", y).returncode == 4
    for kept in (x, hand, other):
        assert pid_of(sandbox, kept) and sandbox.cron_line(kept)


BAD_FILES = [
    # (what is wrong, the job table's extra text, what the message must hold)
    ("unknown key", "grcae = 3\n", ", key grcae: unknown key (did you mean grace?)"),
    ("wrong type", "grace = \"3\"\n", ", key grace: must be a number"),
    ("bad schedule", "schedule = \"61 * * * *\"\n", ", key schedule: schedule '61 * * * *'"),
    ("number out of range", "grace = 99999\n", ", key grace: grace 99999: must be from 0 to 3600"),
    ("period with schedule", "period = 60\nschedule = \"*/5 * * * *\"\n", ", key period: give period"),
    ("sync without a cluster", "sync = true\nperiod = 60\n", ", key sync: sync = true is for cluster jobs"),
    ("unknown cluster kind", "cluster = \"mysql://db/x\"\n", ", key cluster: cluster 'mysql://db/x': unknown kind"),
    ("missing workdir", "workdir = \"/nonexistent/dir\"\n", ", key workdir: working directory"),
    ("a schedule that never fires", "schedule = \"0 0 30 2 *\"\nperiodic = true\n",
     ", key schedule: schedule '0 0 30 2 *' never fires"),
    ("env key with =", "env = { \"A=B\" = \"x\" }\n", ", key env: 'A=B' is not a valid variable name"),
    ("20,000 env entries", "env = { " + ", ".join(f"V{i} = \"x\"" for i in range(20000)) + " }\n",
     ", key env: env: the command and its 2000"),
    ("another user's default lock folder", "lock_dir = \"/tmp/watchdog-singleton-4000000000\"\n",
     ", key lock_dir: lock folder /tmp/watchdog-singleton-4000000000 is named as the default lock folder of uid"),
]


@pytest.mark.cron_ticks  # its bad files set period and schedule themselves; every job it applies runs
def test_every_kind_of_bad_file_changes_nothing_and_names_file_line_job_key(sandbox: Sandbox) -> None:
    good, bad, hand = sandbox.job("good"), sandbox.job("bad"), sandbox.job("hand")
    sandbox.ok("install", hand, "--no-start", "--", "/bin/sleep", "1000")
    path = write_file(sandbox, f"[jobs.{good}]\n{sleeper(good)}\n[jobs.{bad}]\n{sleeper(bad)}\n", quiet=False)
    sandbox.ok("apply", path)
    pids = (pid_of(sandbox, good), pid_of(sandbox, bad))
    before = snapshot(sandbox)
    new = sandbox.job("new")
    # Each bad file also adds a job and changes a good one: none of it may happen.
    head = (f"[jobs.{new}]\n{sleeper(new)}\n[jobs.{good}]\n{sleeper(good + '-v2')}\n\n"
            f"[jobs.{bad}]\n{sleeper(bad)}")
    bad_line = head.count("\n") + 5  # write_file's [defaults] block is 4 lines
    cases = [(what, head + extra, f"{path}:{bad_line}: job {bad}{needle}") for what, extra, needle in BAD_FILES]
    cases += [
        ("program not found", head.replace(f'"/usr/bin/python3", "-c", "{SLEEP}", "m-{bad}"', '"no-such-prog-x"'),
         f"{path}:{bad_line - 1}: job {bad}, key command: program 'no-such-prog-x' not found"),
        ("duplicate job", head + f"[jobs.{good}]\ncommand = \"x\"\n", f"{path}:{bad_line}: job {good} is defined"),
        ("syntax error", head + "grace = = 3\n", f"{path}:{bad_line}: TOML syntax error"),
        ("unterminated quote in command", head.replace(f'["/usr/bin/python3", "-c", "{SLEEP}", "m-{bad}"]',
                                                       '"python3 -c \'print(1)"'),
         f"{path}:{bad_line - 1}: job {bad}, key command: \"python3 -c 'print(1)\" cannot be split"),
        ("deeply nested", head + "x = " + "[" * 5000 + "]" * 5000 + "\n", f"{path}: TOML nested too deeply"),
        ("a job name with a newline", head + '[jobs."two\\nlines"]\ncommand = "/bin/true"\n',
         "job two\\nlines: job name 'two\\nlines' contains a newline"),
    ]
    for what, text, needle in cases:
        write_file(sandbox, text, quiet=False)
        proc = sandbox.ws("apply", path)
        assert proc.returncode == 2, (what, proc.returncode, proc.stdout, proc.stderr)
        lines = proc.stderr.splitlines()
        assert len(lines) == 1 and needle in lines[0], (what, needle, proc.stderr)
        assert proc.stdout == "", (what, proc.stdout)
        assert snapshot(sandbox) == before, what
    assert (pid_of(sandbox, good), pid_of(sandbox, bad)) == pids
    assert pids_with_arg(f"m-{new}", sandbox.user.uid) == []
    assert not os.path.exists("/tmp/watchdog-singleton-4000000000")
    assert f"{good}  running" in sandbox.ok("status").stdout  # the other jobs' status still works


def test_apply_of_a_fifo_is_refused_at_once_instead_of_waiting_for_a_writer(sandbox: Sandbox) -> None:
    fifo = sandbox.path("jobs.toml")
    os.mkfifo(fifo)
    os.chown(fifo, sandbox.user.uid, sandbox.user.gid)
    before = sandbox.crontab()
    proc = sandbox.ws("apply", fifo, timeout=30)
    assert proc.returncode == 2 and proc.stderr.splitlines() == [f"watchdog-singleton: {fifo} is a FIFO: "
                                                                 "apply reads a regular file"], proc.stderr
    assert sandbox.crontab() == before


