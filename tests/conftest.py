"""Shared fixtures: an unprivileged test user, a sandbox per test, the CLI run as that user,
the real crontab and cron daemon, and waiting on conditions with deadlines.

Tests that talk to cron run the CLI as the test user (created when we run as root): our users are
never root, and the crontab of the account running the tests is never touched.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional

import pytest
from slurmkit import slurm_cluster as slurm_cluster  # the real-Slurm fixture, for every test module
from userkit import UnprivilegedUser as UnprivilegedUser  # `X as X`: re-exported, the tests import these from here
from userkit import is_locked as is_locked
from userkit import locked_inodes as locked_inodes
from userkit import poll_until as poll_until
from userkit import read_bytes, unprivileged_user, user_pids

HERE = os.path.dirname(os.path.abspath(__file__))
HELPERS = os.path.join(HERE, "helpers")
TEST_USER = os.environ.get("WATCHDOG_SINGLETON_TEST_USER", "wstest")
CRON_MIN_PATH = "/usr/bin:/bin"


def wait_for(condition: Callable[[], Any], timeout: float, interval: float = 0.05,
             what: str = "condition") -> Any:
    """Poll `condition` until it returns something truthy; fail the test at the deadline."""
    value = poll_until(condition, timeout, interval)
    if not value:
        pytest.fail(f"timed out after {timeout:g} s waiting for {what}")
    return value


def holds_for(condition: Callable[[], bool], seconds: float, interval: float = 0.05) -> bool:
    """True if `condition` stays true for `seconds`, checked every `interval`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not condition():
            return False
        time.sleep(interval)
    return condition()


def is_zombie(pid: int) -> bool:
    stat = read_bytes(f"/proc/{pid}/stat")
    return not stat or stat[stat.rindex(b")") + 2:].split()[0] in (b"Z", b"X")


def pids_with_arg(marker: str, uid: Optional[int] = None) -> list[int]:
    """Live (non-zombie) processes whose command line holds `marker` as one argument."""
    found = []
    for pid in (user_pids(uid) if uid is not None else [int(p) for p in os.listdir("/proc") if p.isdigit()]):
        args = read_bytes(f"/proc/{pid}/cmdline").split(b"\0")
        if marker.encode() in args and not is_zombie(pid):
            found.append(pid)
    return found


def ensure_user(name: str) -> UnprivilegedUser:
    """The unprivileged user NAME, created if missing (needs root)."""
    if os.getuid() != 0:
        pytest.skip("needs root to create an unprivileged test user")
    return unprivileged_user(name)


@pytest.fixture(scope="session")
def test_user() -> Iterator[UnprivilegedUser]:
    user = ensure_user(TEST_USER)
    os.makedirs(user.home, exist_ok=True)
    os.chown(user.home, user.uid, user.gid)
    probe = subprocess.run([sys.executable, "-c", "import watchdog_singleton"], capture_output=True,
                           env={"PATH": CRON_MIN_PATH}, cwd="/", **user.popen_kwargs())
    if probe.returncode != 0:
        pytest.fail(f"the test user cannot run {sys.executable}: {probe.stderr.decode().strip()} "
                    "(make the venv from /usr/bin/python3 in a world-readable place)")
    yield user
    # A last sweep over every sandbox of this session (each also cleans up after its own test).
    for box in SANDBOXES:
        box.cleanup()


def cron_running() -> bool:
    for path in ("/run/crond.pid", "/var/run/crond.pid"):
        pid = read_bytes(path).strip()
        if pid.isdigit() and os.path.exists(f"/proc/{int(pid)}"):
            return True
    return any(read_bytes(f"/proc/{p}/comm").strip() in (b"cron", b"crond") for p in os.listdir("/proc") if p.isdigit())


@pytest.fixture(scope="session")
def cron_daemon(test_user: UnprivilegedUser) -> None:
    if not cron_running():
        if not shutil.which("cron"):
            pytest.fail("no cron daemon and no cron binary: tests/run.sh installs Debian's cron")
        subprocess.run(["cron"], check=True)
        wait_for(cron_running, 10, what="cron to start")


@dataclass
class Sandbox:
    """One test's world as the test user: its own state folder, job names and helper files."""

    user: UnprivilegedUser
    dir: str
    tag: str
    jobs: list[str] = field(default_factory=list)
    tmp_paths: list[str] = field(default_factory=list)
    crontab_before: Optional[bytes] = None  # the crontab before this test first set it: put back at cleanup

    @property
    def state_home(self) -> str:
        return os.path.join(self.dir, "state")

    @property
    def state_root(self) -> str:
        return os.path.join(self.state_home, "watchdog-singleton", os.uname().nodename)

    def lock_dir(self) -> str:
        """The default lock folder this sandbox's state folder recorded (lock.private_lock_dir), or ""."""
        try:
            with open(os.path.join(self.state_root, "lock-dir")) as f:
                return f.read().strip()
        except OSError:
            return ""

    def job(self, base: str) -> str:
        name = f"{base}-{self.tag}"
        self.jobs.append(name)
        return name

    def path(self, *parts: str) -> str:
        return os.path.join(self.dir, *parts)

    def env(self, extra: Optional[dict[str, str]] = None, path: str = CRON_MIN_PATH) -> dict[str, str]:
        env = {"HOME": self.user.home, "USER": self.user.name, "LOGNAME": self.user.name,
               "PATH": path, "XDG_STATE_HOME": self.state_home, "LANG": "C.UTF-8"}
        env.update(extra or {})
        return env

    def run_as(self, argv: list[str], env: Optional[dict[str, str]] = None, cwd: Optional[str] = None,
               input: Optional[bytes] = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(argv, env=env if env is not None else self.env(), cwd=cwd or self.dir,
                              input=input.decode() if input is not None else None, capture_output=True,
                              text=True, timeout=timeout, **self.user.popen_kwargs())

    def ws(self, *args: str, env: Optional[dict[str, str]] = None, cwd: Optional[str] = None,
           timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """The CLI, as the test user: python -m watchdog_singleton ARGS."""
        return self.run_as([sys.executable, "-m", "watchdog_singleton", *args], env=env, cwd=cwd,
                           timeout=timeout)

    def ok(self, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        proc = self.ws(*args, **kw)
        assert proc.returncode == 0, f"{args} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        return proc

    def status(self, name: str) -> dict[str, Any]:
        proc = self.ws("status", name, "--json")
        assert proc.returncode in (0, 3), proc.stderr
        status = json.loads(proc.stdout)
        assert isinstance(status, dict), proc.stdout
        return status

    def crontab(self) -> bytes:
        proc = subprocess.run(["crontab", "-u", self.user.name, "-l"], capture_output=True)
        return proc.stdout if proc.returncode == 0 else b""

    def set_crontab(self, data: bytes) -> None:
        if self.crontab_before is None:
            self.crontab_before = self.crontab()
        proc = subprocess.run(["crontab", "-"], input=data, capture_output=True, env=self.env(),
                              cwd=self.dir, **self.user.popen_kwargs())
        assert proc.returncode == 0, proc.stderr

    def cron_line(self, name: str) -> str:
        for line in self.crontab().decode().splitlines():
            if line.endswith(f"#watchdog-singleton:{name}") and not line.startswith("#"):
                return line
        raise AssertionError(f"no enabled crontab line for {name}")

    def tick_command(self, name: str) -> str:
        """The command cron hands to /bin/sh for NAME's line."""
        line = self.cron_line(name)
        command = line[len(line.split(" ")[0]) + 1:] if line.startswith("@") else line.split(" ", 5)[5]
        return re.sub(r"\\%", "%", command)

    def cron_env(self) -> dict[str, str]:
        return {"HOME": self.user.home, "LOGNAME": self.user.name, "SHELL": "/bin/sh", "PATH": CRON_MIN_PATH}

    def fire_tick(self, name: str, wait: bool = True) -> subprocess.Popen[bytes]:
        """Run NAME's crontab line the way cron does: /bin/sh -c, cron's minimal environment."""
        proc = subprocess.Popen(["/bin/sh", "-c", self.tick_command(name)], env=self.cron_env(), cwd=self.user.home,
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True, **self.user.popen_kwargs())
        if wait:
            out, _ = proc.communicate(timeout=60)
            assert out == b"", f"a tick printed something (cron would mail it): {out!r}"
        return proc

    def write_helper(self, name: str) -> str:
        """Copy tests/helpers/NAME into the sandbox, where the test user can read it."""
        target = self.path(name)
        shutil.copy(os.path.join(HELPERS, name), target)
        os.chown(target, self.user.uid, self.user.gid)
        return target

    def tmp_path(self, label: str) -> str:
        """A path under /tmp for this test (not created), removed at cleanup."""
        target = f"/tmp/{label}-{self.tag}"
        self.tmp_paths.append(target)
        return target

    def mkdir(self, *parts: str) -> str:
        target = self.path(*parts)
        os.makedirs(target, exist_ok=True)
        os.chown(target, self.user.uid, self.user.gid)
        return target

    def cleanup(self) -> None:
        if not os.path.isdir(self.dir):
            return  # cleaned up already
        for name in self.jobs:
            self.ws("uninstall", name)
        if self.crontab_before is not None:  # foreign lines a test wrote must not meet the next test
            ours = tuple(f"#watchdog-singleton:{n}".encode() for n in self.jobs)
            self.set_crontab(b"".join(line for line in self.crontab_before.splitlines(keepends=True)
                                      if not line.rstrip(b"\n").endswith(ours)))
        # Anything left that this sandbox started: supervisors name its state folder, daemons
        # carry their job's lock path in the environment.
        tokens = [f"WATCHDOG_SINGLETON_JOB={n}".encode() for n in self.jobs]
        for pid in user_pids(self.user.uid):
            cmdline = read_bytes(f"/proc/{pid}/cmdline")
            environ = read_bytes(f"/proc/{pid}/environ").split(b"\0")
            if self.dir.encode() in cmdline or any(t in environ for t in tokens):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self.tmp_paths.append(self.lock_dir())  # the private lock folder its state folder recorded
        shutil.rmtree(self.dir, ignore_errors=True)
        for target in filter(None, self.tmp_paths):
            if os.path.islink(target) or os.path.isfile(target):
                os.unlink(target)
            else:
                shutil.rmtree(target, ignore_errors=True)


SANDBOXES: list["Sandbox"] = []


def make_sandbox(user: UnprivilegedUser, label: str) -> Sandbox:
    tag = secrets.token_hex(3)
    base = os.path.join(user.home, "t")
    os.makedirs(base, exist_ok=True)
    os.chown(base, user.uid, user.gid)
    box = Sandbox(user, os.path.join(base, f"{re.sub(r'[^A-Za-z0-9_-]', '_', label)[:40]}-{tag}"), tag)
    os.makedirs(box.dir)
    os.chown(box.dir, user.uid, user.gid)
    SANDBOXES.append(box)
    return box


@pytest.fixture
def sandbox(test_user: UnprivilegedUser, request: pytest.FixtureRequest) -> Iterator[Sandbox]:
    box = make_sandbox(test_user, request.node.name)
    yield box
    box.cleanup()
