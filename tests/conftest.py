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
from testuser import TEST_USER as TEST_USER  # re-exported
from userkit import UnprivilegedUser as UnprivilegedUser  # `X as X`: re-exported, the tests import these from here
from userkit import is_locked as is_locked
from userkit import locked_inodes as locked_inodes
from userkit import poll_until as poll_until
from userkit import read_bytes, unprivileged_user, user_pids

HERE = os.path.dirname(os.path.abspath(__file__))
KITS = os.path.join(HERE, "kits")  # on sys.path (pyproject: pytest pythonpath, mypy_path)
HELPERS = os.path.join(KITS, "helpers")
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
    crontab_at_start: bytes = b""  # what the cron guard compares with (lines a test left are not ours)
    ticks: bool = False  # the test is about cron: installs keep their default every-minute schedule

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
        try:
            return subprocess.run(argv, env=env if env is not None else self.env(), cwd=cwd or self.dir,
                                  input=input.decode() if input is not None else None, capture_output=True,
                                  text=True, timeout=timeout, **self.user.popen_kwargs())
        finally:
            self.note_crontab()

    def note_crontab(self) -> None:
        """Tell the cron guard about every-minute lines this test added (see cron_guard)."""
        note_every_minute_lines(self.crontab(), self.crontab_at_start)

    def ws(self, *args: str, env: Optional[dict[str, str]] = None, cwd: Optional[str] = None,
           timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """The CLI, as the test user: python -m watchdog_singleton ARGS (an install gets
        quiet_install's schedule unless this sandbox's test is about cron)."""
        if not self.ticks:
            args = quiet_install(args)
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
        self.note_crontab()

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
        """Copy tests/kits/helpers/NAME into the sandbox, where the test user can read it."""
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

    def left_installed(self) -> list[str]:
        """This sandbox's jobs that `uninstall` would find: a definition, a run state or a batch
        record in the state folder, or a crontab line. For any other, uninstall only says "no such
        job" (exit 4), so cleanup spares that CLI start (most tests uninstall their own jobs)."""
        lines = self.crontab()
        root = self.state_root

        def known(name: str) -> bool:
            return (f"#watchdog-singleton:{name}\n".encode() in lines
                    or any(os.path.lexists(os.path.join(root, folder, f"{name}.json")) for folder in ("jobs", "run"))
                    or os.path.lexists(os.path.join(os.path.dirname(root), "job-state", name, ".batch")))
        return [name for name in self.jobs if known(name)]

    def cleanup(self) -> None:
        if not os.path.isdir(self.dir):
            return  # cleaned up already
        self.note_crontab()
        for name in self.left_installed():
            self.ws("uninstall", name)
        # A line an uninstall refused to remove (a test's own doing) must not meet the next test.
        ours = tuple(f"#watchdog-singleton:{n}".encode() for n in self.jobs)
        lines = self.crontab().splitlines(keepends=True)
        kept = [line for line in lines if not line.rstrip(b"\n").endswith(ours)]
        if len(kept) != len(lines):
            self.set_crontab(b"".join(kept))
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


def make_sandbox(user: UnprivilegedUser, label: str, ticks: bool = False) -> Sandbox:
    """A sandbox for one test (or one module's tests); `ticks`: they are about cron (cron_guard)."""
    tag = secrets.token_hex(3)
    base = os.path.join(user.home, "t")
    os.makedirs(base, exist_ok=True)
    os.chown(base, user.uid, user.gid)
    box = Sandbox(user, os.path.join(base, f"{re.sub(r'[^A-Za-z0-9_-]', '_', label)[:40]}-{tag}"), tag,
                  ticks=ticks)
    box.crontab_at_start = box.crontab()
    os.makedirs(box.dir)
    os.chown(box.dir, user.uid, user.gid)
    SANDBOXES.append(box)
    return box


@pytest.fixture
def sandbox(test_user: UnprivilegedUser, request: pytest.FixtureRequest) -> Iterator[Sandbox]:
    box = make_sandbox(test_user, request.node.name, ticks=about_cron(request.node))
    yield box
    box.cleanup()


# The cron guard. The real cron daemon runs during the suite (tests/run.sh starts it) and fires
# every `* * * * *` line of the test user's crontab at each minute boundary: a tick in the middle
# of a test that is not about cron starts a job it installed with --no-start, or restarts one it
# just stopped or crashed on purpose. So the sandbox gives every install a schedule cron does not
# fire during a test (Sandbox.ws), and this guard fails a test that still leaves an every-minute
# line (enabled, all five fields `*`) unless it is marked `cron` (it needs real ticks) or
# `cron_ticks` (its lines are every minute by nature, e.g. --every, and what a tick does cannot
# change what it checks).
EVERY_MINUTE = b"* * * * *"
CRON_MARKERS = ("cron", "cron_ticks")
# A keep-alive daemon's schedule that cron fires only when the daemon itself starts after a boot,
# so never during a test; a real one (a daemon started at boot, restarted by its supervisor), and
# not sparse, so install prints what it prints for the default. Ticks in a test are fire_tick's.
QUIET_SCHEDULE = "@reboot"
# Options after which the schedule is the test's own business (or install does not install).
OWN_SCHEDULE = ("--schedule", "--every", "--periodic", "--help")


def about_cron(node: pytest.Item | pytest.Collector) -> bool:
    return any(node.get_closest_marker(m) for m in CRON_MARKERS)


def quiet_install(args: tuple[str, ...]) -> tuple[str, ...]:
    """`install ARGS` with QUIET_SCHEDULE unless ARGS choose the schedule or the kind of job."""
    if not args or args[0] != "install":
        return args
    options = args[:args.index("--")] if "--" in args else args
    if any(a.split("=")[0] in OWN_SCHEDULE for a in options):
        return args
    return (args[0], "--schedule", QUIET_SCHEDULE, *args[1:])


@dataclass
class CronGuard:
    ticks_allowed: bool = True  # outside a test (module fixtures set up before it), nothing is checked
    seen: list[str] = field(default_factory=list)


GUARD = CronGuard()


def every_minute_lines(crontab: bytes) -> list[bytes]:
    """The enabled lines of `crontab` that cron fires at every minute boundary."""
    return [line for line in crontab.splitlines()
            if not line.lstrip().startswith(b"#") and b" ".join(line.split()[:5]) == EVERY_MINUTE]


def note_every_minute_lines(crontab: bytes, before: bytes) -> None:
    old = set(every_minute_lines(before))
    for line in every_minute_lines(crontab):
        text = line.decode(errors="replace")
        if line not in old and text not in GUARD.seen:
            GUARD.seen.append(text)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """In parallel (pytest -n 2 --dist loadgroup), the tests of the one real Slurm node run on one
    worker, one after another: two workers' jobs would wait for each other's CPUs."""
    for item in items:
        if item.get_closest_marker("slurm") is not None or "slurm_cluster" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group("slurm"))


@pytest.fixture(autouse=True)
def cron_guard(request: pytest.FixtureRequest) -> Iterator[None]:
    GUARD.ticks_allowed = about_cron(request.node)
    GUARD.seen = []
    yield
    seen, GUARD.seen = GUARD.seen, []
    if seen and not GUARD.ticks_allowed:
        pytest.fail("left every-minute crontab lines the real cron daemon fires mid-test (mark the test "
                    f"`cron` or `cron_ticks` if that is what it is about): {seen}", pytrace=False)
    GUARD.ticks_allowed = True
