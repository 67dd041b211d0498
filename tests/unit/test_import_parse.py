"""`import`'s parser, line shape by line shape, without processes: old crontab lines (flock -n,
run-one, keep-one-running, plain) become jobs or are left alone with a reason. (The command, as
the test user on the real crontab: tests/e2e/test_import.py.)"""

from __future__ import annotations

from typing import Optional

import pytest

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
