"""`import`: old crontab lines (flock -n, run-one, keep-one-running, plain) become jobs.

The command runs as the test user against the real crontab: the seed line keeps its daemon.out,
every other byte of a tricky crontab stays, a copy still running under the old lock is adopted and
never duplicated. (The parser, line shape by line shape: tests/unit/test_import_parse.py.)
"""

from __future__ import annotations

import datetime
import os
import re
import signal
import subprocess

import pytest
from conftest import Sandbox, holds_for, pids_with_arg, wait_for
from test_core import TRICKY_CRONTAB


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
