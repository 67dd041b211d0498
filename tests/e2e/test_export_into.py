"""export --into FILE keeps the user's own file (comments, order, [defaults], relative paths) and
changes only what the host changed; apply refuses a file with no job unless --allow-empty."""

from __future__ import annotations

import os
import re

from conftest import QUIET_SCHEDULE, Sandbox

SLEEP = "import time; time.sleep(10**6)"


def hand_written(web: str, sync: str, off: str) -> str:
    return f"""# Jobs of this host: the file in git.
[defaults]
settle = 0.3     # quick to start
schedule = "{QUIET_SCHEDULE}"   # cron fires it only at boot: never in the middle of a test
grace = 2
log_dir = "logs"   # next to this file

# the web server
[jobs.{web}]
command = "/usr/bin/python3 -c '{SLEEP}' m-{web}"
env = {{ GREETING = "hi" }}

# nightly, every 5 minutes for now
[jobs.{sync}]
schedule = "*/5 * * * *"   # cron fires it
periodic = true
command = ["/bin/true"]

[jobs.{off}]
command = ["/bin/sleep", "1000"]
enable = false
workdir = "."
"""


def write(box: Sandbox, name: str, text: str) -> str:
    path = box.path(name)
    with open(path, "w") as fh:
        fh.write(text)
    os.chown(path, box.user.uid, box.user.gid)
    return path


def read(path: str) -> str:
    with open(path) as fh:
        return fh.read()


def plan_of(output: str) -> dict[str, str]:
    rows = {}
    for line in output.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] in ("create", "update", "restart", "remove", "unchanged"):
            rows[parts[1]] = parts[0]
    return rows


def jobs_on_host(box: Sandbox) -> tuple[bytes, list[str]]:
    folder = os.path.join(box.state_root, "jobs")
    return box.crontab(), sorted(os.listdir(folder)) if os.path.isdir(folder) else []


def test_export_into_the_applied_file_leaves_it_byte_identical_and_adds_only_a_new_job(sandbox: Sandbox) -> None:
    web, sync, off, hand = sandbox.job("web"), sandbox.job("sync"), sandbox.job("off"), sandbox.job("hand")
    sandbox.mkdir("logs")
    original = hand_written(web, sync, off)
    path = write(sandbox, "jobs.toml", original)
    sandbox.ok("apply", path)
    assert plan_of(sandbox.ok("apply", path, "--dry-run").stdout) == {web: "unchanged", sync: "unchanged",
                                                                        off: "unchanged"}

    out = sandbox.ok("export", "--into", path)
    assert read(path) == original, read(path)
    assert "unchanged" in out.stdout

    sandbox.ok("install", hand, "--grace", "4", "--env", "K2=x y", "--no-start", "--",
               "/usr/bin/python3", "-c", SLEEP, f"m-{hand}")
    sandbox.ok("export", "--into", path)
    updated = read(path)
    assert updated.startswith(original), updated
    added = updated[len(original):]
    logs = os.path.relpath(os.path.join(sandbox.state_root, "logs"), sandbox.dir)  # the default, not the file's
    assert added == (f'\n[jobs.{hand}]\ncommand = ["/usr/bin/python3", "-c", "{SLEEP}", "m-{hand}"]\n'
                     f'grace = 4\nsettle = 1\nlog_dir = "{logs}"\nenv = {{K2 = "x y"}}\n'), added
    assert "PATH" not in updated and "LANG" not in updated  # the shell's, not baked in

    before = jobs_on_host(sandbox)
    again = sandbox.ok("apply", path)
    assert plan_of(again.stdout) == {web: "unchanged", sync: "unchanged", off: "unchanged", hand: "unchanged"}, \
        again.stdout
    assert "nothing to change" in again.stdout and jobs_on_host(sandbox) == before


def test_export_into_rewrites_only_the_changed_key_and_drops_the_table_of_an_uninstalled_job(
        sandbox: Sandbox) -> None:
    web, sync, off = sandbox.job("web"), sandbox.job("sync"), sandbox.job("off")
    sandbox.mkdir("logs")
    original = hand_written(web, sync, off)
    path = write(sandbox, "jobs.toml", original)
    sandbox.ok("apply", path)
    # by hand: a new schedule for sync, and off uninstalled
    sandbox.ok("install", sync, "--periodic", "--schedule", "*/7 * * * *", "--settle", "0.3", "--grace", "2",
               "--log-dir", sandbox.path("logs"), "--", "/bin/true")
    sandbox.ok("uninstall", off)
    out = sandbox.ok("export", "--into", path)
    assert re.search(rf"updated {re.escape(sync)} \(schedule\).*removed {re.escape(off)}", out.stdout), out.stdout
    expected = original.replace('"*/5 * * * *"   # cron fires it', '"*/7 * * * *"   # cron fires it')
    expected = expected[:expected.index(f"\n[jobs.{off}]")]
    assert read(path) == expected, read(path)
    assert plan_of(sandbox.ok("apply", path, "--dry-run").stdout) == {web: "unchanged", sync: "unchanged"}


def test_export_into_a_missing_file_writes_the_jobs_and_plain_export_bakes_no_path_or_lang(sandbox: Sandbox) -> None:
    hand = sandbox.job("hand")
    sandbox.ok("install", hand, "--no-start", "--env", "PATH=/opt/x/bin:/usr/bin:/bin", "--", "/bin/sleep", "5")
    plain = sandbox.ok("export", hand).stdout
    assert "LANG" not in plain and 'PATH = "/opt/x/bin:/usr/bin:/bin"' in plain  # set by hand: kept
    path = sandbox.path("new.toml")
    sandbox.ok("export", "--into", path, hand)
    assert read(path).rstrip("\n") == plain.rstrip("\n")


def test_apply_refuses_a_file_with_no_job_unless_allow_empty_and_names_every_job_it_removes(
        sandbox: Sandbox) -> None:
    a, b = sandbox.job("a"), sandbox.job("b")
    yearly = 'periodic = true\nschedule = "0 0 1 1 *"\n'  # due once a year: cron runs neither during the test
    path = write(sandbox, "jobs.toml", f"[jobs.{a}]\ncommand = [\"/bin/true\"]\n{yearly}"
                                       f"[jobs.{b}]\ncommand = [\"/bin/true\"]\n{yearly}")
    sandbox.ok("apply", path)
    write(sandbox, "jobs.toml", "# emptied by mistake\n[defaults]\ngrace = 3\n")
    before = jobs_on_host(sandbox)
    for args in (("apply", path), ("apply", path, "--dry-run")):
        proc = sandbox.ws(*args)
        assert proc.returncode == 2 and proc.stdout == "", proc
        assert len(proc.stderr.splitlines()) == 1, proc.stderr
        assert "defines no job" in proc.stderr and f"{a}, {b}" in proc.stderr and "--allow-empty" in proc.stderr
    assert jobs_on_host(sandbox) == before
    dry = sandbox.ok("apply", path, "--allow-empty", "--dry-run")
    assert plan_of(dry.stdout) == {a: "remove", b: "remove"}
    assert f"apply would remove 2 job(s) no longer in {path}: {a}, {b}" in dry.stderr
    assert jobs_on_host(sandbox) == before
    done = sandbox.ok("apply", path, "--allow-empty")
    assert f"removing 2 job(s) no longer in {path}: {a}, {b}" in done.stderr
    assert jobs_on_host(sandbox)[1] == []


def test_run_and_the_supervisor_never_import_tomlkit() -> None:
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "watchdog_singleton", "run", "--help"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "usage:" in proc.stdout, proc
    assert "watchdog_singleton.tick.launch" in proc.stderr and "tomlkit" not in proc.stderr
    probe = ("import sys, watchdog_singleton.supervisor.core, watchdog_singleton.supervisor.resident, "
             "watchdog_singleton.tick.launch; "
             "print('tomlkit' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=60).stdout.strip() == "False"
