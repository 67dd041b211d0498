"""`import`: old crontab lines (flock -n, run-one, keep-one-running, plain) become jobs.

The parser is pinned line shape by line shape without processes; the command runs as the test
user against the real crontab: the seed line keeps its daemon.out, every other byte of a tricky
crontab stays, a copy still running under the old lock is adopted and never duplicated.
"""

from __future__ import annotations

import datetime
import os
import re
import signal
import subprocess
from typing import Optional

import pytest
from conftest import Sandbox, holds_for, pids_with_arg, wait_for
from test_core import TRICKY_CRONTAB

from watchdog_singleton.cron import oldlines as cronimport
from watchdog_singleton.cron.crontab import replace_lines
from watchdog_singleton.cron.oldlines import LeftAlone, Proposal
from watchdog_singleton.errors import UserError
from watchdog_singleton.job.model import check_name

HOME = "/home/u"
SEED = (b'* * * * * flock -n /tmp/$USER.lockfile -c "python -u $HOME/daemon.py >> $HOME/daemon.out 2>&1"'
        b' >> $HOME/cron.out 2>&1')


def parse(line: str, taken: Optional[set[str]] = None) -> Proposal:
    [result] = cronimport.scan(line.encode(), HOME, "u", taken or set())
    assert isinstance(result, Proposal), result
    return result


def refusal(line: str) -> str:
    [result] = cronimport.scan(line.encode(), HOME, "u", set())
    assert isinstance(result, LeftAlone), result
    return result.reason


# -- the parser ------------------------------------------------------------------------------
def test_seed_line_becomes_a_kept_alive_daemon_writing_to_the_same_daemon_out() -> None:
    [p] = cronimport.scan(SEED, HOME, "u", set())
    assert isinstance(p, Proposal)
    assert p.kind == "flock" and p.keep_alive and p.schedule == "* * * * *"
    assert p.command == ["python", "-u", "/home/u/daemon.py"]
    assert p.stdout_log == p.stderr_log == "/home/u/daemon.out"
    assert p.name == "daemon" and p.workdir == HOME
    assert p.lock == "/tmp/.lockfile" and p.lock_text == "/tmp/$USER.lockfile"


def test_a_lock_path_with_user_warns_that_cron_shares_it_between_users() -> None:
    p = parse(SEED.decode())
    [warning] = p.warnings
    assert "$USER" in warning and "/tmp/.lockfile" in warning and "every user" in warning
    assert parse("* * * * * flock -n /tmp/mine.lock ./d").warnings == []


@pytest.mark.parametrize("line, argv, out, err", [
    ('* * * * * flock -n /tmp/a.lock -c "./d >> /tmp/o 2>&1"', ["./d"], "/tmp/o", "/tmp/o"),
    ("* * * * * flock -n /tmp/a.lock ./d --x 1", ["./d", "--x", "1"], None, None),
    ("* * * * * flock -xn /tmp/a.lock ./d", ["./d"], None, None),
    ("* * * * * flock -nx /tmp/a.lock ./d", ["./d"], None, None),
    ("* * * * * flock --nonblock /tmp/a.lock ./d", ["./d"], None, None),
    ("* * * * * /usr/bin/flock -n -E 3 /tmp/a.lock ./d", ["./d"], None, None),
    ("* * * * * flock -n /tmp/a.lock ./d >> /tmp/o 2>&1", ["./d"], "/tmp/o", "/tmp/o"),
    ("* * * * * flock -n /tmp/a.lock sh -c './d 2>>/tmp/e'", ["./d"], None, "/tmp/e"),
    ("* * * * * flock -n /tmp/a.lock -c './d >> ~/o' >> ~/cron.out 2>&1", ["./d"], "/home/u/o", "/home/u/cron.out"),
    ("* * * * * run-one ./d", ["./d"], None, None),
    ("* * * * * keep-one-running ./d 'a b'", ["./d", "a b"], None, None),
])
def test_each_classic_every_minute_form_becomes_a_kept_alive_job(line: str, argv: list[str], out: Optional[str],
                                                                 err: Optional[str]) -> None:
    p = parse(line)
    assert p.keep_alive and p.command == argv and (p.stdout_log, p.stderr_log) == (out, err)


@pytest.mark.parametrize("line, schedule", [
    ("*/4 * * * * flock -n /tmp/a.lock ./panda_server-add", "*/4 * * * *"),
    ("0-59/4 * * * * /usr/bin/flock -xn /tmp/a.lock ./add", "0-59/4 * * * *"),
    ("0 3 * * * run-one ./backup", "0 3 * * *"),
    ("*/5 * * * * ./sync.sh", "*/5 * * * *"),
    ("* * * * * ./every-minute-no-lock", "* * * * *"),
    ("@hourly ./hourly", "@hourly"),
])
def test_other_schedules_and_plain_lines_become_periodic_jobs(line: str, schedule: str) -> None:
    p = parse(line)
    assert not p.keep_alive and p.schedule == schedule


def test_keep_one_running_is_kept_alive_whatever_its_schedule() -> None:
    assert parse("0 * * * * keep-one-running ./d").keep_alive


@pytest.mark.parametrize("line, reason", [
    ("* * * * * a | b", "pipeline"),
    ("* * * * * a && b", "&&"),
    ("* * * * * a || b", "||"),
    ("* * * * * cd /x; ./d", "(;)"),
    ("* * * * * ./d &", "&"),
    ("* * * * * echo $(date)", "$( )"),
    ("* * * * * echo `date`", "backticks"),
    ('* * * * * flock -n /tmp/a -c "echo `date`"', "backticks"),
    ("* * * * * echo 50% done", "unescaped %"),
    ("* * * * * echo $USER", "$USER"),
    ("* * * * * echo $NOT_SET_ANYWHERE", "$NOT_SET_ANYWHERE"),
    ('* * * * * flock -n /tmp/a -c "echo $USER"', "$USER"),
    ("* * * * * ls *.txt", "*"),
    ("* * * * * (./d)", "subshell"),
    ("* * * * * ./d <<EOF", "here-document"),
    ("* * * * * echo ${X:-y}", "${X:-y}"),
    ("* * * * * cat ~other/x", "another user"),
    ("* * * * * flock /tmp/a ./d", "without -n"),
    ("* * * * * flock -n -w 5 /tmp/a ./d", "-w"),
    ("* * * * * flock -s -n /tmp/a ./d", "-s"),
    ("* * * * * flock -n 9", "descriptor"),
    ("* * * * * flock -n /tmp/a", "without a command"),
    ("* * * * * ./d 3>/tmp/x", "descriptor 3"),
    ("* * * * * ./d 'open", "unclosed"),
    ("@reboot ./d", "@reboot"),
    ("@sometimes ./d", "not a schedule"),
    ("FOO=bar", "environment setting"),
    ("MAILTO = me@example.org", "environment setting"),
    ("* * * * *", "not a crontab job line"),
    ("what is this", "not a crontab job line"),
    ("* * * * * /x/python -m watchdog_singleton run --cron web #watchdog-singleton:web", "our own line"),
])
def test_each_line_it_cannot_take_over_is_left_alone_with_its_reason(line: str, reason: str) -> None:
    assert reason in refusal(line)


def test_cron_percent_escape_and_quoting_reach_the_argv_as_sh_would_pass_them() -> None:
    p = parse(r"""*/5 * * * * date +\%Y-\%m-\%d "a b" 'c $HOME' d\ e "$HOME/x" ~/y""")
    assert p.command == ["date", "+%Y-%m-%d", "a b", "c $HOME", "d e", "/home/u/x", "/home/u/y"]


def test_crontab_assignments_are_resolved_and_kept_as_the_jobs_environment() -> None:
    text = b'MAILTO=""\nDATA = "/srv/data"\nPATH=/opt/bin:/usr/bin:/bin\n*/5 * * * * ./d "$DATA" >> $DATA/log\n'
    [*_, p] = cronimport.scan(text, HOME, "u", set())
    assert isinstance(p, Proposal)
    assert p.command == ["./d", "/srv/data"] and p.stdout_log == "/srv/data/log"
    assert p.env == {"DATA": "/srv/data"} and p.path == "/opt/bin:/usr/bin:/bin"


def test_redirections_apply_in_order_like_sh() -> None:
    p = parse("*/5 * * * * ./d 2>&1 >>/tmp/out")  # stderr to where stdout was: cron's mail
    assert (p.stdout_log, p.stderr_log) == ("/tmp/out", None)
    p = parse("*/5 * * * * ./d >/dev/null 2>/tmp/err")
    assert (p.stdout_log, p.stderr_log) == (None, "/tmp/err")
    assert any("thrown away" in n for n in p.notes)
    assert any("truncated" in n for n in parse("*/5 * * * * ./d > /tmp/o").notes)


def test_names_come_from_the_lock_or_the_script_are_valid_and_unique() -> None:
    text = b"\n".join([
        SEED,
        b"* * * * * flock -n /tmp/$USER.lockfile -c 'python3 -u $HOME/daemon.py'",
        b"* * * * * flock -n /tmp/ingest.lock ./bin/run",
        b"*/5 * * * * /usr/bin/python3 /opt/x/.hidden+tool.py",
        b"0 1 * * * ./weird name@2!.sh",
    ])
    results = cronimport.scan(text, HOME, "u", {"daemon"})
    names = [r.name for r in results if isinstance(r, Proposal)]
    assert names[:3] == ["daemon-2", "daemon-3", "ingest"]
    assert len(set(names)) == len(names)
    for name in names:
        assert check_name(name) == name


def test_replace_lines_keeps_every_other_byte() -> None:
    text = b"A=1\r\n\n  # c\n* * * * * old\nx\ttab\n* * * * * old\nno final newline"
    out = replace_lines(text, [(b"* * * * * old", b"NEW1"), (b"* * * * * old", b"NEW2")])
    assert out == b"A=1\r\n\n  # c\nNEW1\nx\ttab\nNEW2\nno final newline"
    with pytest.raises(UserError):
        replace_lines(text, [(b"gone", b"NEW")])


# -- the command, as the test user -------------------------------------------------------------
def home_path(box: Sandbox, *parts: str) -> str:
    """`$HOME/...` for a file in the sandbox, as an old crontab line would say it."""
    return "$HOME/" + os.path.relpath(box.path(*parts), box.user.home)


def write_daemon(box: Sandbox) -> str:
    path = box.path("daemon.py")
    with open(path, "w") as f:
        f.write("import os, sys, time\n"
                "while True:\n"
                "    print('daemon pid', os.getpid(), 'args', ' '.join(sys.argv[1:]), flush=True)\n"
                "    time.sleep(0.2)\n")
    os.chown(path, box.user.uid, box.user.gid)
    return path


def taken_over(output: str) -> dict[int, str]:
    """line number -> job name, from import's report."""
    found: dict[int, str] = {}
    current = 0
    for line in output.splitlines():
        m = re.match(r"line (\d+): ", line)
        if m and "left alone" not in line:
            current = int(m.group(1))
        m = re.match(r"  becomes (\S+) \(", line)
        if m:
            found[current] = m.group(1)
    return found


@pytest.mark.cron_ticks  # every-minute lines are what import takes over; a tick of one meets the lock its copy holds
def test_import_of_the_seed_line_writes_to_the_same_daemon_out_and_keeps_the_rest_byte_identical(
        sandbox: Sandbox) -> None:
    write_daemon(sandbox)
    out = home_path(sandbox, "daemon.out")
    seed = (f'* * * * * flock -n /tmp/$USER.lockfile -c "python3 -u {home_path(sandbox, "daemon.py")} >> {out} 2>&1"'
            f' >> {home_path(sandbox, "cron.out")} 2>&1').encode()
    lines = TRICKY_CRONTAB.split(b"\n")
    before = b"\n".join(lines[:5] + [seed] + lines[5:])
    sandbox.set_crontab(before)
    preview = sandbox.ws("import")
    assert preview.returncode == 0, preview.stderr
    assert sandbox.crontab() == before  # without --apply nothing changes
    assert "$USER" in preview.stderr and "/tmp/.lockfile" in preview.stderr
    assert "left alone (an @reboot line" in preview.stdout
    names = taken_over(preview.stdout)
    sandbox.jobs.extend(names.values())
    assert names[6] == "daemon"
    applied = sandbox.ws("import", "--apply")
    assert applied.returncode == 0, applied.stdout + applied.stderr
    after = sandbox.crontab()
    old, new = before.split(b"\n"), after.split(b"\n")
    assert len(old) == len(new)
    for k, (a, b) in enumerate(zip(old, new), 1):
        if k in names:
            assert b.endswith(f" #watchdog-singleton:{names[k]}".encode()), (k, b)
        else:
            assert a == b, (k, a, b)
    info = sandbox.status("daemon")
    assert info["running"] and info["stdout_log"] == info["stderr_log"] == sandbox.path("daemon.out")
    pid = info["pid"]
    wait_for(lambda: f"daemon pid {pid} ".encode() in open(sandbox.path("daemon.out"), "rb").read(), 20,
             what="the new daemon writing to the old daemon.out")
    assert not os.path.exists(sandbox.path("cron.out"))
    sandbox.fire_tick("daemon")
    assert sandbox.status("daemon")["pid"] == pid
    again = sandbox.ok("import")  # our lines are ours now: nothing left to take over but the same refusals
    assert taken_over(again.stdout) == {}


@pytest.mark.cron_ticks  # every-minute lines are what import takes over; a tick of one meets the lock its copy holds
def test_import_apply_adopts_a_copy_running_under_the_old_lock_and_never_starts_a_second(
        sandbox: Sandbox) -> None:
    write_daemon(sandbox)
    marker = f"marker-{sandbox.tag}"
    lock = f"/tmp/.imp-{sandbox.tag}.lock"  # what /tmp/$USER.imp-TAG.lock is under cron
    sandbox.tmp_paths.append(lock)
    line = (f'* * * * * flock -n /tmp/$USER.imp-{sandbox.tag}.lock -c "python3 -u {home_path(sandbox, "daemon.py")} '
            f'{marker} >> {home_path(sandbox, "daemon.out")} 2>&1"')
    sandbox.set_crontab(line.encode() + b"\n")
    command = line.split(" ", 5)[5]
    old = subprocess.Popen(["/bin/sh", "-c", command], env=sandbox.cron_env(), cwd=sandbox.user.home,
                           stdin=subprocess.DEVNULL, start_new_session=True, **sandbox.user.popen_kwargs())
    try:
        [old_pid] = wait_for(lambda: pids_with_arg(marker, sandbox.user.uid), 20, what="the old copy")
        applied = sandbox.ws("import", "--apply")
        assert applied.returncode == 0, applied.stdout + applied.stderr
        [name] = taken_over(applied.stdout).values()
        sandbox.jobs.append(name)
        assert re.search(rf"{re.escape(name)}: adopted the old copy \(pid \d+", applied.stdout), applied.stdout
        assert pids_with_arg(marker, sandbox.user.uid) == [old_pid]
        info = sandbox.status(name)
        assert info["running"] and "adopted" in info["message"]
        sandbox.fire_tick(name)
        sandbox.ws("start", name)
        assert holds_for(lambda: pids_with_arg(marker, sandbox.user.uid) == [old_pid], 2.0)
        # Once the old copy ends, the next tick starts the job, writing to the same file.
        os.kill(old_pid, signal.SIGTERM)
        old.wait(20)
        sandbox.fire_tick(name)
        [new_pid] = wait_for(lambda: pids_with_arg(marker, sandbox.user.uid), 20, what="the new job")
        assert new_pid != old_pid
        wait_for(lambda: f"daemon pid {new_pid} ".encode() in open(sandbox.path("daemon.out"), "rb").read(), 20,
                 what="the new copy writing to daemon.out")
    finally:
        if old.poll() is None:
            os.killpg(old.pid, signal.SIGKILL)
            old.wait(20)


def test_import_apply_takes_over_only_lines_that_guard_themselves_unless_named_or_all(sandbox: Sandbox) -> None:
    """Plain lines stay byte-identical (their output goes to cron's mail); flock lines are taken
    over; --line N and --all take plain lines too; a line's control bytes are shown escaped; a
    schedule that never fires is left alone; CRON_TZ above a line gives status's next due."""
    tag = sandbox.tag
    for lock in ("p", "feb", "tz"):
        sandbox.tmp_paths.append(f"/tmp/{lock}-{tag}.lock")
    lines = [
        b"0 9 * * mon-fri /usr/bin/true weekday",  # 1: plain
        b"*/5 * * * * date +\\%Y >/dev/null 2>&1",  # 2: plain
        f"*/7 * * * * flock -n /tmp/p-{tag}.lock /usr/bin/true".encode(),  # 3: guarded
        f"0 0 30 2 * flock -n /tmp/feb-{tag}.lock /usr/bin/true".encode(),  # 4: never fires
        b"*/3 * * * * /usr/bin/printf \x1b[31mred\x07",  # 5: control bytes (and a glob: left alone)
        b"CRON_TZ=Asia/Tokyo",  # 6
        f"0 9 * * * flock -n /tmp/tz-{tag}.lock /usr/bin/true".encode(),  # 7: guarded, 09:00 in Tokyo
    ]
    before = b"\n".join(lines) + b"\n"
    sandbox.set_crontab(before)
    preview = sandbox.ok("import")
    assert "\x1b" not in preview.stdout and "\x07" not in preview.stdout
    assert "line 5: left alone (" in preview.stdout and "printf \\x1b[31mred\\x07" in preview.stdout
    assert "line 1: left alone (it guards nothing itself" in preview.stdout and "--line 1 or --all" in preview.stdout
    assert re.search(r"line 4: left alone \(schedule '0 0 30 2 \*' never fires", preview.stdout), preview.stdout
    names = taken_over(preview.stdout)
    assert sorted(names) == [3, 7], preview.stdout
    assert taken_over(sandbox.ok("import", "--all").stdout).keys() == {1, 2, 3, 7}  # 5: a glob, [
    for bad, needle in ((["--line", "4"], "--line 4 cannot be taken over: schedule '0 0 30 2 *' never fires"),
                        (["--line", "6"], "--line 6 cannot be taken over: an environment setting"),
                        (["--line", "99"], "--line 99: no job line there"),
                        (["--line", "1", "--all"], "not both")):
        proc = sandbox.ws("import", "--apply", *bad)
        assert proc.returncode == 2 and proc.stdout == "", (bad, proc)
        assert proc.stderr.splitlines() == [proc.stderr.strip()] and needle in proc.stderr, (bad, proc.stderr)
        assert sandbox.crontab() == before
    sandbox.jobs.extend(names.values())
    sandbox.ok("import", "--apply")
    after = sandbox.crontab().split(b"\n")
    for k, line in enumerate(lines, 1):
        if k in names:
            assert after[k - 1].endswith(f" #watchdog-singleton:{names[k]}".encode()), after[k - 1]
        else:
            assert after[k - 1] == line, (k, after[k - 1])
    from zoneinfo import ZoneInfo

    tokyo = datetime.datetime.now(ZoneInfo("Asia/Tokyo"))
    nine = tokyo.replace(hour=9, minute=0, second=0, microsecond=0)
    if nine <= tokyo:
        nine += datetime.timedelta(days=1)
    due = sandbox.status(names[7])["next_due_at"]
    assert datetime.datetime.strptime(due, "%Y-%m-%dT%H:%M:%S%z").timestamp() == nine.timestamp(), due
    # A plain line is taken over when named; the rest stays as it was.
    weekday = taken_over(sandbox.ok("import", "--line", "1", "--apply").stdout)[1]
    sandbox.jobs.append(weekday)
    again = sandbox.crontab().split(b"\n")
    assert again[0].endswith(f" #watchdog-singleton:{weekday}".encode())
    assert again[1:] == after[1:]
    assert sandbox.status(weekday)["schedule"] == "0 9 * * mon-fri"
    assert sandbox.ws("status").returncode == 0
