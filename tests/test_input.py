"""Hostile and bad input: one clear line on stderr, exit 2, and nothing changed anywhere
(crontab byte-identical, no new files, no process started). Also concurrent crontab edits."""

from __future__ import annotations

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
    (["ok-name", "--", "/bin/echo", "new\nline", "bad-input-marker"], "newline"),
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


@pytest.mark.parametrize("plant", ["foreign-folder", "symlink"])
def test_a_lock_folder_planted_by_another_user_is_refused(other_user: UnprivilegedUser, plant: str) -> None:
    box = make_sandbox(other_user, f"hostile-{plant}")
    victim_dir = f"/tmp/watchdog-singleton-{other_user.uid}"
    decoy = f"/tmp/decoy-{box.tag}"
    try:
        if plant == "foreign-folder":
            os.mkdir(victim_dir, 0o777)  # owned by root, i.e. by someone else
            os.chmod(victim_dir, 0o777)
        else:
            os.mkdir(decoy, 0o700)
            os.chown(decoy, other_user.uid, other_user.gid)  # even a target the victim owns
            os.symlink(decoy, victim_dir)
        for args in (["install", "victim", *CMD], ["run", "victim", "--", "/bin/sleep", "1000", "bad-input-marker"]):
            line = assert_refused(box, args, victim_dir, extra_roots=(decoy,))
            assert ("symlink" in line) if plant == "symlink" else ("belongs to uid 0" in line)
        assert os.listdir(victim_dir) == []
    finally:
        if os.path.islink(victim_dir):
            os.unlink(victim_dir)
        elif os.path.isdir(victim_dir):
            shutil.rmtree(victim_dir)
        shutil.rmtree(decoy, ignore_errors=True)
        box.cleanup()


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
    from watchdog_singleton.crontab import CrontabEditor, CrontabIO

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
