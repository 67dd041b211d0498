"""Failure notification (issue 18, point 1): --on-failure CMD, --mail ADDR, --notify-every.

The rate limit and the message are plain calls with a fake clock; the rest runs for real as the
test user, with a recording `sendmail` stand-in (WATCHDOG_SINGLETON_SENDMAIL in the job's
environment): a crash loop mails once per --notify-every, a failing periodic run calls the hook
with the right environment, a hook that hangs is stopped and never delays a restart.
"""

from __future__ import annotations

import os
import time
from typing import Any

import pytest
from conftest import Sandbox, holds_for, wait_for

from watchdog_singleton import batch
from watchdog_singleton.batch import Spec, schedulers
from watchdog_singleton.cron import oldlines as cronimport
from watchdog_singleton.cron.oldlines import Proposal
from watchdog_singleton.errors import UserError
from watchdog_singleton.job import notify
from watchdog_singleton.job.model import Job


def script(sandbox: Sandbox, name: str, body: str) -> str:
    path = sandbox.path(name)
    with open(path, "w") as f:
        f.write("#!/bin/sh\n" + body)
    os.chmod(path, 0o755)
    os.chown(path, sandbox.user.uid, sandbox.user.gid)
    return path


def recording_sendmail(sandbox: Sandbox) -> tuple[str, str]:
    """A sendmail stand-in that appends its argv and the message to a file; (program, file)."""
    out = sandbox.path("mail.out")
    program = script(sandbox, "sendmail", f'{{ echo "ARGV: $*"; cat; echo "=== END"; }} >> {out}\n')
    return program, out


def mails(path: str) -> list[str]:
    if not os.path.exists(path):
        return []
    return [m for m in open(path).read().split("=== END\n") if m.strip()]


def log_text(sandbox: Sandbox, name: str) -> str:
    path = sandbox.status(name)["stderr_log"]
    return open(path, errors="replace").read() if os.path.exists(path) else ""


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] not in ("Z", "X")
    except OSError:
        return False


# -- plain calls ---------------------------------------------------------------------------------
def test_each_event_kind_is_due_at_most_once_per_period_on_a_fake_clock(tmp_path: Any) -> None:
    folder = str(tmp_path / "state")
    assert notify.claim(folder, "backoff", 1000.0, 3600.0)
    assert not notify.claim(folder, "backoff", 1001.0, 3600.0)
    assert not notify.claim(folder, "backoff", 4599.0, 3600.0)
    assert notify.claim(folder, "run-failed", 1002.0, 3600.0), "another kind has its own period"
    assert notify.claim(folder, "backoff", 4600.0, 3600.0)
    assert not notify.claim(folder, "backoff", 4601.0, 3600.0)
    assert notify.claim(folder, "backoff", 10.0, 3600.0), "a clock set back must not silence it for good"
    assert notify.due({}, "lease-lost", 0.0, 60.0) and not notify.due({"x": 5.0}, "x", 6.0, 60.0)


def test_a_stored_job_without_the_new_fields_loads_with_no_notification() -> None:
    job = Job.from_dict({"name": "old", "command": ["/bin/true"], "workdir": "/"})
    assert job.on_failure == [] and job.mail == "" and job.notify_every == 3600.0
    assert not notify.wanted(job)
    assert not notify.job_event(job, "backoff", 1, "x")


@pytest.mark.parametrize("value", ["", "   ", "'unclosed", ["", "x"], ["a\nb"]])
def test_an_empty_or_broken_hook_is_refused(value: Any) -> None:
    with pytest.raises(UserError, match="--on-failure"):
        notify.check_hook(value)


@pytest.mark.parametrize("value", ["me@example.org\nBcc: all@example.org", "a b@example.org", "-oQ/tmp",
                                   "me@example.org,", "<me@example.org>"])
def test_a_bad_mail_address_is_refused(value: str) -> None:
    with pytest.raises(UserError, match="--mail"):
        notify.check_mail(value)


def test_hook_words_are_split_as_a_shell_splits_them_and_addresses_like_mailto() -> None:
    assert notify.check_hook("notify-send 'web failed' --urgency=critical") == [
        "notify-send", "web failed", "--urgency=critical"]
    assert notify.check_hook(["/bin/echo", "a b"]) == ["/bin/echo", "a b"]
    assert notify.check_mail("root") == "root"
    assert notify.check_mail("a@example.org,b@example.org") == "a@example.org, b@example.org"


def test_the_mail_names_the_job_the_event_the_host_the_log_end_and_how_to_see_more(tmp_path: Any) -> None:
    log = tmp_path / "web.stderr.log"
    log.write_text("".join(f"line {i}\n" for i in range(50)))
    payload = {"name": "web", "event": "backoff", "code": 3, "detail": "3 quick exits in a row", "argv": [],
               "mail": "ops@example.org", "stderr_log": str(log), "command": ["/usr/bin/python3", "-u", "s.py"],
               "every": 3600.0}
    text = notify.mail_text(payload, "node7", time.time()).decode()
    head, _, body = text.partition("\n\n")
    assert "To: ops@example.org" in head.splitlines()
    assert "Subject: watchdog-singleton: web on node7: restarts in a crash loop (backoff)" in head
    assert "Last exit: 3" in body and "Host:      node7" in body and "/usr/bin/python3 -u s.py" in body
    assert "  line 49" in body and "  line 30" in body and "line 29\n" not in body
    assert "watchdog-singleton logs web --stderr" in body


def test_a_hook_that_hangs_is_stopped_with_its_whole_tree_after_its_timeout(tmp_path: Any) -> None:
    pids = tmp_path / "pids"
    log = tmp_path / "err.log"
    hook = ["/bin/sh", "-c", f"sleep 300 & echo $! >> {pids}; echo $$ >> {pids}; sleep 300"]
    payload = {"name": "web", "event": "run-failed", "code": 1, "argv": hook, "stderr_log": str(log)}
    env = notify.hook_env(dict(os.environ, PATH="/usr/bin:/bin"), payload, "/tmp/test-notify.lock")
    began = time.monotonic()
    [said] = notify.deliver(payload, env, timeout=1.0)
    took = time.monotonic() - began
    assert "still ran after 1 s: its tree was stopped" in said
    assert took < 1.0 + notify.STOP_GRACE + 3, took
    both = [int(p) for p in pids.read_text().split()]
    assert len(both) == 2 and not any(alive(p) for p in both), "the hook's background child must go too"
    assert said in log.read_text()


def test_a_batch_chain_ending_for_good_calls_the_hook_from_its_submission_record(tmp_path: Any) -> None:
    root = str(tmp_path / "state" / "h1")
    out = tmp_path / "env.out"
    batch.save_record(root, "web", {"name": "web", "command": ["/bin/true"], "workdir": "/",
                                    "on_failure": ["/bin/sh", "-c", f"env > {out}"], "mail": "",
                                    "notify_every": 60.0, "stderr_log": str(tmp_path / "web.err")})
    assert notify.batch_main([root, "web", "chain-ended", "143", "not requeued"]) == 0
    env = dict(line.split("=", 1) for line in out.read_text().splitlines() if "=" in line)
    assert env["WATCHDOG_SINGLETON_EVENT"] == "chain-ended" and env["WATCHDOG_SINGLETON_EXIT"] == "143"
    assert env["WATCHDOG_SINGLETON_JOB"] == "web" and env["WATCHDOG_SINGLETON_DETAIL"] == "not requeued"
    out.unlink()
    notify.batch_main([root, "web", "chain-ended", "143"])
    assert not out.exists(), "a second end within --notify-every is not notified"


def test_a_batch_script_tells_of_its_end_only_when_the_chain_has_a_hook_or_a_mail() -> None:
    base: dict[str, Any] = dict(name="web", command=["/bin/sleep", "1000"], workdir="/srv", root="/h/s/h1",
                                runner=["/venv/bin/python", "-I", "-m", "watchdog_singleton"], walltime=3600,
                                signal_lead=120)
    for sched in ("slurm", "pbs", "htcondor"):
        plain = "".join(schedulers.get(sched).render(Spec(**base)).values())
        told = "".join(schedulers.get(sched).render(Spec(**base, mail="ops@example.org")).values())
        assert "chain-ended" not in plain
        assert "watchdog_singleton _notify /h/s/h1 \"$ws_name\" chain-ended" in told, sched


def test_import_keeps_a_lines_mailto_as_its_failure_mail() -> None:
    text = b"MAILTO=ops@example.org\n* * * * * flock -n /tmp/a.lock ./a\nMAILTO=\"\"\n*/5 * * * * ./b\n"
    first, second = [r for r in cronimport.scan(text, "/home/u", "u", set()) if isinstance(r, Proposal)]
    assert first.mail == "ops@example.org" and second.mail == ""
    assert "MAILTO" not in first.env


# -- for real, as the test user ------------------------------------------------------------------
def test_a_crash_looping_daemon_mails_once_per_notify_every(sandbox: Sandbox) -> None:
    name = sandbox.job("crashmail")
    sendmail, out = recording_sendmail(sandbox)
    sandbox.ok("install", name, "--mail", "ops@example.org", "--notify-every", "3600", "--settle", "0",
               "--backoff-initial", "0.2", "--backoff-max", "0.4", "--env", f"WATCHDOG_SINGLETON_SENDMAIL={sendmail}",
               "--", "/bin/sh", "-c", "echo 'database is down' >&2; exit 3")
    wait_for(lambda: mails(out), 30, what="the failure mail")
    wait_for(lambda: log_text(sandbox, name).count("restart in") >= 8, 30, what="the crash loop going on")
    assert holds_for(lambda: len(mails(out)) == 1, 2), "a crash loop must be one mail, not one per restart"
    [mail] = mails(out)
    assert mail.startswith("ARGV: -t -oi\n")
    assert "To: ops@example.org" in mail and f"Subject: watchdog-singleton: {name} on" in mail
    assert "Last exit: 3" in mail and "database is down" in mail
    assert f"watchdog-singleton logs {name} --stderr" in mail
    assert "failure notice (backoff): mail to ops@example.org" in log_text(sandbox, name)
    wait_for(lambda: "failure notice (backoff): mailed ops@example.org" in log_text(sandbox, name), 20,
             what="the notifier's note")
    sandbox.ok("uninstall", name)


@pytest.mark.cron_ticks  # --every: the crontab line only keeps the supervisor alive
def test_a_failing_periodic_run_calls_the_hook_with_the_jobs_environment_and_the_event(sandbox: Sandbox) -> None:
    name = sandbox.job("perhook")
    out = sandbox.path("hook.env")
    hook = script(sandbox, "hook.sh", f"env > {out}.tmp; mv {out}.tmp {out}\n")
    sandbox.ok("install", name, "--every", "3", "--env", "SITE=cern", "--on-failure", f"{hook} --from test",
               "--", "/bin/sh", "-c", "echo run failed >&2; exit 5")
    wait_for(lambda: os.path.exists(out), 30, what="the hook")
    env = dict(line.split("=", 1) for line in open(out).read().splitlines() if "=" in line)
    info = sandbox.status(name)
    assert env["WATCHDOG_SINGLETON_EVENT"] == "run-failed"
    assert env["WATCHDOG_SINGLETON_JOB"] == name and env["WATCHDOG_SINGLETON_EXIT"] == "5"
    assert env["WATCHDOG_SINGLETON_STDERR_LOG"] == info["stderr_log"]
    assert env["WATCHDOG_SINGLETON_STDOUT_LOG"] == info["stdout_log"]
    assert env["SITE"] == "cern", "the hook runs in the job's environment"
    assert env["WATCHDOG_SINGLETON_LOCK"] != info["lock_path"], "the hook must not be taken for the job's tree"
    sandbox.ok("uninstall", name)


def test_a_hook_that_hangs_is_stopped_and_never_delays_a_restart(sandbox: Sandbox) -> None:
    name = sandbox.job("hanghook")
    starts = sandbox.path("starts")
    pids = sandbox.path("hook.pids")
    hook = script(sandbox, "hang.sh", f"sleep 300 & echo $! >> {pids}; echo $$ >> {pids}; sleep 300\n")
    sandbox.ok("install", name, "--on-failure", hook, "--settle", "0", "--backoff-initial", "0.2",
               "--backoff-max", "0.4", "--env", "WATCHDOG_SINGLETON_HOOK_TIMEOUT=3",
               "--", "/bin/sh", "-c", f"echo x >> {starts}; exit 1")
    wait_for(lambda: os.path.exists(pids) and len(open(pids).read().split()) == 2, 30, what="the hook to start")
    hooked = [int(p) for p in open(pids).read().split()]
    count = len(open(starts).read().split())
    # While the hook hangs, the crash loop restarts on its backoff (0.4 s at most), not after the hook.
    wait_for(lambda: len(open(starts).read().split()) >= count + 4, 2.5, what="restarts while the hook hangs")
    assert any(alive(p) for p in hooked), "the hook should still run here (its limit is 3 s)"
    wait_for(lambda: not any(alive(p) for p in hooked), 3 + notify.STOP_GRACE + 5, what="the hook's tree stopped")
    wait_for(lambda: "hook hang.sh still ran after 3 s" in log_text(sandbox, name) or
             "still ran after 3 s: its tree was stopped" in log_text(sandbox, name), 10, what="the note")
    assert sandbox.status(name)["phase"] in ("backoff", "starting", "running")
    sandbox.ok("uninstall", name)


@pytest.mark.parametrize("args,says", [
    (["--on-failure", ""], "--on-failure is empty"),
    (["--mail", "ops@example.org\nBcc: all@example.org"], "--mail"),
    (["--notify-every", "0"], "--notify-every 0"),
])
def test_bad_notification_input_is_one_line_exit_2_and_installs_nothing(sandbox: Sandbox, args: list[str],
                                                                         says: str) -> None:
    name = sandbox.job("badnote")
    proc = sandbox.ws("install", name, *args, "--", "/bin/true")
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and says in proc.stderr, proc.stderr
    assert name.encode() not in sandbox.crontab()
    assert not os.path.exists(os.path.join(sandbox.state_root, "jobs", f"{name}.json"))


def test_apply_takes_the_keys_also_from_defaults_and_export_writes_them_back(sandbox: Sandbox) -> None:
    name = sandbox.job("applied")
    other = sandbox.job("applied2")
    path = sandbox.path("jobs.toml")
    with open(path, "w") as f:
        f.write(f'[defaults]\non_failure = "notify-send \'job failed\'"\nmail = "ops@example.org"\n'
                f'notify_every = 600\nenable = false\n\n'
                f'[jobs.{name}]\ncommand = "/bin/sleep 1000"\n\n'
                f'[jobs.{other}]\ncommand = "/bin/sleep 1000"\non_failure = ["/bin/echo", "a b"]\nmail = ""\n')
    os.chown(path, sandbox.user.uid, sandbox.user.gid)
    sandbox.ok("apply", path)
    exported = sandbox.ok("export", name, other).stdout
    assert 'on_failure = [\n    "notify-send",\n    "job failed",\n]' in exported, exported
    assert 'mail = "ops@example.org"' in exported and "notify_every = 600" in exported
    assert '"a b"' in exported
    with open(path, "w") as f:
        f.write(f'[jobs.{name}]\ncommand = "/bin/sleep 1000"\non_failure = ""\n')
    proc = sandbox.ws("apply", path)
    assert proc.returncode == 2 and "key on_failure" in proc.stderr and len(proc.stderr.splitlines()) == 1


@pytest.mark.cron_ticks  # an every-minute line is what import takes over
def test_import_shows_and_keeps_mailto_as_mail(sandbox: Sandbox) -> None:
    daemon = script(sandbox, "d.sh", "exec sleep 1000\n")
    lock = sandbox.tmp_path("notify-imp.lock")
    sandbox.set_crontab(f"MAILTO=ops@example.org\n* * * * * flock -n {lock} {daemon}\n".encode())
    proc = sandbox.ok("import")
    assert "--mail ops@example.org" in proc.stdout, proc.stdout


def test_a_farm_with_failed_tasks_inside_a_job_calls_the_jobs_hook(tmp_path: Any, monkeypatch: Any) -> None:
    from watchdog_singleton import paths
    from watchdog_singleton.job.model import JobStore

    root = str(tmp_path / "state" / "watchdog-singleton" / paths.host())
    folder = paths.job_state_dir(root, "farmer")
    out = tmp_path / "env.out"
    hook = ["/bin/sh", "-c", f"env > {out}.tmp; mv {out}.tmp {out}"]
    JobStore(root).save(Job(name="farmer", command=["/bin/true"], workdir="/", state_folder=folder,
                            lock_dir=str(tmp_path), on_failure=hook))
    monkeypatch.setenv("WATCHDOG_SINGLETON_JOB", "farmer")
    monkeypatch.setenv("WATCHDOG_SINGLETON_STATE_DIR", folder)
    assert notify.from_environment("farm-failed", 1, "2 tasks failed")
    wait_for(lambda: out.exists(), 20, what="the hook")
    env = dict(line.split("=", 1) for line in out.read_text().splitlines() if "=" in line)
    assert env["WATCHDOG_SINGLETON_EVENT"] == "farm-failed" and env["WATCHDOG_SINGLETON_DETAIL"] == "2 tasks failed"
    assert not notify.from_environment("farm-failed", 1, "again"), "once per --notify-every"
