"""Hostile and bad input: one clear line on stderr, exit 2, and nothing changed anywhere
(crontab byte-identical, no new files, no process started). Also concurrent crontab edits."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from typing import Any, Iterator

import pytest
from conftest import TEST_USER, Sandbox, UnprivilegedUser, ensure_user, make_sandbox, pids_with_arg, wait_for

FOREIGN = b"# mine\nMAILTO=\"\"\nFOO = spaced\n0 0 * * 7\techo 'a #b' % x\n"
OTHER_USER = f"{TEST_USER}2"


def tree(*roots: str) -> set[str]:
    found: set[str] = set()
    for root in roots:
        for folder, dirs, files in os.walk(root):
            found.update(os.path.join(folder, n) for n in dirs + files)
        if os.path.lexists(root):
            found.add(root)
    return found


def assert_refused(box: Sandbox, args: list[str], needle: str, env: dict[str, str] | None = None,
                   extra_roots: tuple[str, ...] = ()) -> str:
    """Run the CLI with bad input; check exit 2, one line naming the problem, nothing changed."""
    roots = (box.dir, f"/tmp/watchdog-singleton-{box.user.uid}") + extra_roots
    before_files, before_tab = tree(*roots), box.crontab()
    proc = box.ws(*args, env=env)
    assert proc.returncode == 2, (args, proc.returncode, proc.stderr)
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("watchdog-singleton: "), proc.stderr
    assert needle in lines[0], lines[0]
    assert proc.stdout == ""
    assert box.crontab() == before_tab
    assert tree(*roots) == before_files
    assert pids_with_arg("bad-input-marker", box.user.uid) == []
    return lines[0]


@pytest.fixture
def foreign(sandbox: Sandbox) -> Iterator[Sandbox]:
    sandbox.set_crontab(FOREIGN)
    yield sandbox
    sandbox.set_crontab(b"")


CMD = ["--", "/bin/sleep", "1000", "bad-input-marker"]
BAD_INSTALLS = [
    (["", *CMD], "empty"),
    ([".", *CMD], "'.'"),
    (["..", *CMD], "'..'"),
    (["a/b", *CMD], "a/b"),
    (["two words", *CMD], "two words"),
    (["line\nbreak", *CMD], "newline"),
    (["ctrl\x07char", *CMD], "control"),
    (["x" * 65, *CMD], "65 characters"),
    (["--", "-dash", "/bin/sleep", "1000", "bad-input-marker"], "starts with '-'"),
    (["ok-name"], "no command"),
    (["ok-name", "--", "no-such-program-xyz", "bad-input-marker"], "not found"),
    (["ok-name", "--", "./plain-file", "bad-input-marker"], "not executable"),
    (["ok-name", "--schedule", "61 * * * *", *CMD], "61 * * * *"),
    (["ok-name", "--schedule", "* * * *", *CMD], "4 fields"),
    (["ok-name", "--schedule", "* * * * * *", *CMD], "6 fields"),
    (["ok-name", "--schedule", "@foo", *CMD], "@foo"),
    (["ok-name", "--schedule", "* * * * *\n* * * * * evil", *CMD], "schedule"),
    (["ok-name", "--env", "NOEQUALS", *CMD], "NOEQUALS"),
    (["ok-name", "--env", "1BAD=x", *CMD], "1BAD"),
    (["ok-name", "--log-dir", "/proc/1/no-logs-here", *CMD], "/proc/1/no-logs-here"),
    (["ok-name", "--log-dir", "/etc/hostname/logs", *CMD], "not a folder"),
    (["ok-name", "--workdir", "/no/such/dir", *CMD], "/no/such/dir"),
    (["ok-name", "--grace", "-1", *CMD], "--grace -1"),
    (["ok-name", "--restart", "sometimes", *CMD], "--restart"),
    (["ok-name", "--bogus-option", *CMD], "--bogus-option"),
]


@pytest.mark.parametrize("args,needle", BAD_INSTALLS, ids=[repr(a[0])[:20] + "|" + n for a, n in BAD_INSTALLS])
def test_bad_install_input_is_refused_and_changes_nothing(foreign: Sandbox, args: list[str], needle: str) -> None:
    with open(foreign.path("plain-file"), "w") as f:
        f.write("not a program\n")
    os.chmod(foreign.path("plain-file"), 0o644)
    assert_refused(foreign, ["install", *args], needle)


def test_a_planted_log_symlink_is_refused(foreign: Sandbox) -> None:
    logs = foreign.mkdir("logs")
    os.symlink("/etc/passwd", os.path.join(logs, "victim.stdout.log"))
    assert_refused(foreign, ["install", "victim", "--log-dir", logs, *CMD], "symlink")


def test_bad_names_are_refused_by_every_command(foreign: Sandbox) -> None:
    for command in ("status", "stop", "start", "restart", "uninstall", "logs"):
        assert_refused(foreign, [command, "../etc"], "../etc")
    assert_refused(foreign, ["run", "a/b", "--", "/bin/true"], "a/b")


@pytest.fixture
def other_user(test_user: UnprivilegedUser) -> Iterator[UnprivilegedUser]:
    """A second unprivileged user, whose default lock folder another user can pre-create."""
    user = ensure_user(OTHER_USER)
    yield user
    subprocess.run(["crontab", "-u", user.name, "-r"], capture_output=True)


def sleeper(marker: str) -> list[str]:
    return ["/usr/bin/python3", "-c", "import time; time.sleep(10**6)", marker]


def squat(adversary: UnprivilegedUser, path: str, kind: str) -> None:
    """`adversary` makes `path` first, as any local user can in /tmp: a folder or a symlink."""
    if kind == "folder":
        argv = ["mkdir", "-m", "0777", path]
    else:
        argv = ["ln", "-s", f"/home/{adversary.name}", path]
    subprocess.run(argv, check=True, user=adversary.uid, group=adversary.gid, extra_groups=[])


@pytest.mark.parametrize("kind", ["folder", "symlink"])
def test_a_squatted_default_lock_folder_does_not_keep_a_job_down(sandbox: Sandbox, other_user: UnprivilegedUser,
                                                                 kind: str) -> None:
    """wsinput2 makes /tmp/watchdog-singleton-<uid of the test user> first: the test user's jobs
    still install, start and stop (their lock lives in a folder of a name nobody can take), nothing
    goes into the squatted one, status says plainly that it is not ours, and that name cannot be
    used by hand."""
    squatted = f"/tmp/watchdog-singleton-{sandbox.user.uid}"
    aside = f"{squatted}.aside-{sandbox.tag}"
    if os.path.lexists(squatted):
        os.rename(squatted, aside)  # our own, left by an earlier test: put back afterwards
    try:
        squat(other_user, squatted, kind)
        name = sandbox.job("squatted")
        sandbox.ok("install", name, "--settle", "0.3", "--", *sleeper(f"m-{sandbox.tag}"))
        pid = wait_for(lambda: sandbox.status(name)["pid"], 10, what=f"{name} to run")
        info = sandbox.status(name)
        assert info["running"] and pids_with_arg(f"m-{sandbox.tag}", sandbox.user.uid) == [pid]
        lock_dir = os.path.dirname(info["lock_path"])
        assert lock_dir.startswith(f"{squatted}-") and info["lock_held"]
        st = os.lstat(lock_dir)
        assert stat.S_ISDIR(st.st_mode) and st.st_uid == sandbox.user.uid and stat.S_IMODE(st.st_mode) == 0o700
        table = sandbox.ok("status").stdout
        assert f"lock folder {squatted}" in table and ("not to you" in table or "symlink" in table), table
        sandbox.ok("stop", name)
        assert pids_with_arg(f"m-{sandbox.tag}", sandbox.user.uid) == []
        sandbox.ok("start", name)
        wait_for(lambda: sandbox.status(name)["running"], 10, what=f"{name} to run again")
        if kind == "folder":
            assert os.listdir(squatted) == []
        line = assert_refused(sandbox, ["install", "by-hand", "--lock-dir", squatted, *CMD], squatted)
        assert ("symlink" in line) if kind == "symlink" else (f"belongs to uid {other_user.uid}" in line)
    finally:
        if os.path.islink(squatted):
            os.unlink(squatted)
        elif os.path.isdir(squatted):
            shutil.rmtree(squatted)
        if os.path.lexists(aside):
            os.rename(aside, squatted)


def test_an_installed_line_with_the_old_lock_name_runs_when_that_name_is_taken(
        sandbox: Sandbox, other_user: UnprivilegedUser) -> None:
    """A job installed by an earlier version stores /tmp/watchdog-singleton-UID and its crontab
    line names it. After a reboot someone else makes that folder first: the line's tick still
    starts the job, in the user's private folder."""
    squatted = f"/tmp/watchdog-singleton-{sandbox.user.uid}"
    aside = f"{squatted}.aside-{sandbox.tag}"
    if os.path.lexists(squatted):
        os.rename(squatted, aside)
    try:
        name = sandbox.job("oldline")
        sandbox.ok("install", name, "--no-start", "--lock-dir", squatted, "--", *sleeper(f"m-{sandbox.tag}"))
        assert squatted in sandbox.cron_line(name)
        if os.path.isdir(squatted):
            shutil.rmtree(squatted)  # the reboot emptied /tmp ...
        squat(other_user, squatted, "folder")  # ... and another user was first
        sandbox.fire_tick(name)
        wait_for(lambda: sandbox.status(name)["running"], 10, what=f"{name} to run: {sandbox.status(name)}")
        assert os.path.dirname(sandbox.status(name)["lock_path"]).startswith(f"{squatted}-")
        assert os.listdir(squatted) == []
        sandbox.fire_tick(name)  # a second tick finds it running and starts nothing
        assert len(pids_with_arg(f"m-{sandbox.tag}", sandbox.user.uid)) == 1
        sandbox.ok("uninstall", name)
        assert pids_with_arg(f"m-{sandbox.tag}", sandbox.user.uid) == []
    finally:
        if os.path.isdir(squatted) and not os.path.islink(squatted):
            shutil.rmtree(squatted)
        if os.path.lexists(aside):
            os.rename(aside, squatted)


def test_another_users_default_lock_name_is_never_created(foreign: Sandbox, other_user: UnprivilegedUser) -> None:
    theirs = f"/tmp/watchdog-singleton-{other_user.uid}"
    existed = os.path.lexists(theirs)
    needle = f"default lock folder of uid {other_user.uid}:"
    assert_refused(foreign, ["install", "x", "--lock-dir", theirs, *CMD], needle)
    assert_refused(foreign, ["install", "x", "--lock-dir", f"{theirs}-0123456789abcdef", *CMD], theirs)
    assert_refused(foreign, ["run", "x", "--lock-dir", theirs, "--", "/bin/true"], theirs)
    path = foreign.path("jobs.toml")
    with open(path, "w") as f:
        f.write(f'[jobs.x]\ncommand = ["/bin/sleep", "1000", "bad-input-marker"]\nlock_dir = "{theirs}"\n')
    assert_refused(foreign, ["apply", path], f"{path}:3: job x, key lock_dir: lock folder {theirs}")
    assert os.path.lexists(theirs) == existed


def test_a_lock_folder_on_a_network_filesystem_is_refused(foreign: Sandbox) -> None:
    if os.getuid() != 0 or not shutil.which("bindfs"):
        pytest.skip("needs root and bindfs (a FUSE file system) to mount one")
    src, mnt = foreign.mkdir("fuse-src"), foreign.mkdir("fuse-mnt")
    subprocess.run(["bindfs", src, mnt], check=True)
    try:
        lock_dir = os.path.join(mnt, "locks")
        line = assert_refused(foreign, ["install", "netfs", "--lock-dir", lock_dir, *CMD], "FUSE")
        assert "--allow-network-fs" in line
        name = foreign.job("netfs")
        foreign.ok("install", name, "--no-start", "--lock-dir", lock_dir, "--allow-network-fs", *CMD)
        foreign.ok("uninstall", name)
    finally:
        subprocess.run(["umount", "-l", mnt])


def test_crontab_denied_by_cron_deny_is_refused(other_user: UnprivilegedUser) -> None:
    box = make_sandbox(other_user, "denied")
    deny = "/etc/cron.deny"
    original = open(deny, "rb").read() if os.path.exists(deny) else None
    try:
        with open(deny, "ab") as f:
            f.write(f"{other_user.name}\n".encode())
        line = assert_refused(box, ["install", "victim", *CMD], "not allowed")
        assert "cron.allow" in line
    finally:
        if original is None:
            os.unlink(deny)
        else:
            with open(deny, "wb") as f:
                f.write(original)
        box.cleanup()


def _as_user_in_namespace(box: Sandbox, unshare_args: list[str], setup: str,
                          argv: list[str]) -> subprocess.CompletedProcess[str]:
    env = " ".join(f"{k}='{v}'" for k, v in box.env().items())
    inner = (f"{setup} setpriv --reuid={box.user.uid} --regid={box.user.gid} --clear-groups -- "
             f"env -i {env} {' '.join(argv)}; echo exit=$?")
    return subprocess.run(["unshare", *unshare_args, "--", "/bin/sh", "-c", inner], capture_output=True,
                          text=True, cwd=box.dir, timeout=60)


def test_no_crontab_binary_is_a_clear_error(foreign: Sandbox) -> None:
    if os.getuid() != 0:
        pytest.skip("needs root to hide the crontab binary in a mount namespace")
    crontab = shutil.which("crontab")
    before = foreign.crontab()
    proc = _as_user_in_namespace(foreign, ["--mount"], f"mount --bind /dev/null {crontab} &&",
                                 [sys.executable, "-m", "watchdog_singleton", "install", "nocron", *CMD])
    assert proc.stdout.strip() == "exit=2", proc
    assert proc.stderr.strip() == ("watchdog-singleton: no crontab command on this host "
                                   "(install cron, e.g. the Debian package 'cron')")
    assert foreign.crontab() == before
    assert not os.path.exists(os.path.join(foreign.state_root, "jobs", "nocron.json"))


def test_no_cron_daemon_install_warns_and_status_says_so(foreign: Sandbox) -> None:
    if os.getuid() != 0:
        pytest.skip("needs root to hide the cron daemon in a PID namespace")
    name = foreign.job("nodaemon")
    proc = _as_user_in_namespace(
        foreign, ["--pid", "--fork", "--mount-proc"], "",
        [sys.executable, "-m", "watchdog_singleton", "install", name, "--no-start", *CMD, "&&",
         sys.executable, "-m", "watchdog_singleton", "status"])
    assert "exit=0" in proc.stdout, proc
    assert "no cron daemon runs on this host" in proc.stderr
    assert "warning: no cron daemon runs on this host" in proc.stdout
    assert foreign.cron_line(name)  # the entry is in place for when cron runs


def test_twenty_concurrent_installs_then_uninstalls_keep_every_line(foreign: Sandbox) -> None:
    names = [foreign.job(f"c{i}") for i in range(20)]

    def all_at_once(verb: str) -> None:
        procs = [subprocess.Popen([sys.executable, "-m", "watchdog_singleton", verb, n] +
                                  (["--no-start", "--", "/bin/sleep", "1000"] if verb == "install" else []),
                                  env=foreign.env(), cwd=foreign.dir, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  **foreign.user.popen_kwargs()) for n in names]
        for p in procs:
            out, err = p.communicate(timeout=120)
            assert p.returncode == 0, err

    all_at_once("install")
    text = foreign.crontab()
    assert text.startswith(FOREIGN)
    for n in names:
        assert text.count(f"#watchdog-singleton:{n}\n".encode()) == 1
    all_at_once("uninstall")
    assert foreign.crontab() == FOREIGN


def test_a_foreign_write_between_our_read_and_write_is_redone_not_overwritten(foreign: Sandbox) -> None:
    from watchdog_singleton.cron.crontab import CrontabEditor, CrontabIO

    def as_user(argv: list[str], **kw: Any) -> subprocess.CompletedProcess[bytes]:
        proc: subprocess.CompletedProcess[bytes] = subprocess.run(
            argv, env=foreign.env(), cwd=foreign.dir, **foreign.user.popen_kwargs(), **kw)
        return proc

    writes: list[int] = []

    def foreign_write() -> None:
        if not writes:  # once: another terminal's `crontab -e` lands right now
            writes.append(1)
            foreign.set_crontab(foreign.crontab() + b"# added by another terminal\n")

    editor = CrontabEditor(CrontabIO(run=as_user), foreign.tmp_path("edit-lock"), before_write=foreign_write)
    editor.set_entry("raced", b"* * * * * true #watchdog-singleton:raced")
    text = foreign.crontab()
    assert writes == [1]
    assert text == FOREIGN + b"# added by another terminal\n* * * * * true #watchdog-singleton:raced\n"


def test_files_we_create_are_private(sandbox: Sandbox) -> None:
    name = sandbox.job("private")
    sandbox.ok("install", name, "--", "/bin/sleep", "1000")
    wait_for(lambda: sandbox.status(name)["running"], 10)
    ours = os.path.join(sandbox.state_home, "watchdog-singleton")
    for folder, _dirs, files in os.walk(ours):
        assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700, folder
        for f in files:
            assert stat.S_IMODE(os.stat(os.path.join(folder, f)).st_mode) & 0o777 == 0o600, f
    lock = sandbox.status(name)["lock_path"]
    assert stat.S_IMODE(os.stat(lock).st_mode) & 0o777 == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(lock)).st_mode) == 0o700


def test_a_broken_stored_definition_shows_as_broken_and_the_other_jobs_status_still_works(sandbox: Sandbox) -> None:
    good, bad, feb = sandbox.job("good"), sandbox.job("bad"), sandbox.job("feb")
    sandbox.ok("install", good, "--settle", "0.3", "--", *sleeper(f"m-{sandbox.tag}"))
    sandbox.ok("install", bad, "--no-start", "--", "/bin/true")
    jobs = os.path.join(sandbox.state_root, "jobs")
    with open(os.path.join(jobs, f"{bad}.json"), "w") as f:
        f.write('{"name": "%s", "command": "not a list", "workdir": "/"}\n' % bad)  # a hand edit gone wrong
    with open(os.path.join(jobs, f"{good}.json")) as f:
        never = json.load(f)
    never.update(name=feb, periodic=True, schedule="0 0 30 2 *")  # stored by a version that accepted it
    with open(os.path.join(jobs, f"{feb}.json"), "w") as f:
        json.dump(never, f)
    proc = sandbox.ws("status")
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    rows = {line.split()[0]: line for line in proc.stdout.splitlines() if line and not line.startswith(" ")}
    assert " running " in rows[good] and " broken " in rows[bad], proc.stdout
    assert f"the stored definition of {bad} is broken (command is str 'not a list')" in proc.stdout
    infos = {i["name"]: i for i in json.loads(sandbox.ok("status", "--json").stdout)}
    assert infos[good]["running"] and infos[bad]["phase"] == "broken" and infos[feb]["next_due_at"] is None
    assert sandbox.ws("status", bad).returncode == 3
    sandbox.ok("uninstall", bad)
    assert not os.path.exists(os.path.join(jobs, f"{bad}.json"))
    assert sandbox.status(good)["running"]


def test_a_multi_line_python_c_program_is_accepted_and_shown_escaped(sandbox: Sandbox) -> None:
    name = sandbox.job("multiline")
    program = "import time\ntime.sleep(10**6)"
    proc = sandbox.ok("install", name, "--settle", "0.3", "--", "/usr/bin/python3", "-c", program, f"m-{sandbox.tag}")
    shown = "$'import time\\ntime.sleep(10**6)'"
    assert f"/usr/bin/python3 -c {shown} m-{sandbox.tag}" in proc.stdout.splitlines()[0], proc.stdout
    wait_for(lambda: sandbox.status(name)["running"], 10, what=f"{name} to run")
    assert sandbox.status(name)["command"] == ["/usr/bin/python3", "-c", program, f"m-{sandbox.tag}"]
    [row] = [line for line in sandbox.ok("status").stdout.splitlines() if line.startswith(name)]
    assert row.endswith(f"-c {shown} m-{sandbox.tag}"), row
