"""Cluster jobs at the command line: install/submit/apply take --cluster, --lease, --standby,
--rotate and sync (checked without connecting; bad input changes nothing), export writes them
back, and status shows the lease as a real PostgreSQL (tests/kits/pgkit.py) sees it, or one line when
the database cannot be reached."""

from __future__ import annotations

import json
import os
import secrets
import shlex
import socket
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any, Iterator

import pytest
from conftest import QUIET_SCHEDULE, Sandbox

from watchdog_singleton import config
from watchdog_singleton.cluster import Timing
from watchdog_singleton.cluster.engines import open_cluster
from watchdog_singleton.cluster.postgres import PostgresLease
from watchdog_singleton.commands.install import InstallRequest, needs_restart
from watchdog_singleton.job.model import Job
from watchdog_singleton.tick.runargs import parse as parse_run

if TYPE_CHECKING:
    from pgkit import PgCluster

pytest_plugins = ["pgkit"]

NOWHERE = "postgresql://ws@127.0.0.1:1/ws"  # never connected to: input is checked by its shape
CMD = ["--", "/bin/sleep", "1000", "cluster-cli-marker"]
NEED_PSYCOPG = f"cluster jobs need psycopg 3: {sys.executable} -m pip install 'psycopg[binary]'"  # pipx: test_probe_cli


def files_under(*roots: str) -> dict[str, bytes]:
    found: dict[str, bytes] = {}
    for root in roots:
        for folder, dirs, names in os.walk(root):
            for d in dirs:
                found[os.path.join(folder, d)] = b"<dir>"
            for n in names:
                path = os.path.join(folder, n)
                with open(path, "rb") as fh:
                    found[path] = fh.read()
    return found


def assert_refused(box: Sandbox, args: list[str], needle: str, env: dict[str, str] | None = None) -> str:
    """Exit 2, one line naming the problem, crontab and every file unchanged."""
    before = (box.crontab(), files_under(box.dir))
    proc = box.ws(*args, env=env)
    assert proc.returncode == 2, (args, proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("watchdog-singleton: "), proc.stderr
    assert needle in lines[0], lines[0]
    assert proc.stdout == "" and "Traceback" not in proc.stderr
    assert (box.crontab(), files_under(box.dir)) == before
    return lines[0]


BAD = [
    (["--cluster", "mysql://ws@db/ws"], "unknown kind"),
    (["--cluster", "postgresql://ws:hunter2@db/ws"], "password"),
    (["--cluster", "postgresql://ws@db/ws?password=hunter2"], "password"),
    (["--standby"], "--standby is for cluster jobs"),
    (["--rotate"], "--rotate is for cluster jobs"),
    (["--lease", "30"], "--lease is for cluster jobs"),
    (["--periodic", "--sync"], "--sync is for cluster jobs"),
    (["--cluster", NOWHERE, "--sync"], "--sync is for periodic jobs"),
    (["--cluster", NOWHERE, "--lease", "2"], "--lease 2"),
    (["--cluster", NOWHERE, "--lease", "nan"], "--lease"),
    (["--cluster", NOWHERE, "--lean"], "--lean cannot hold a cluster lease"),
    (["--cluster", "none", "--standby"], "--standby is for cluster jobs"),
]


@pytest.mark.parametrize("args,needle", BAD)
def test_bad_cluster_options_on_install_are_one_line_exit_2_and_change_nothing(sandbox: Sandbox, args: list[str],
                                                                               needle: str) -> None:
    name = sandbox.job("bad")
    line = assert_refused(sandbox, ["install", name, "--no-start", *args, *CMD], needle)
    assert "hunter2" not in line


def test_the_environment_variable_is_the_default_cluster_and_none_overrides_it(sandbox: Sandbox) -> None:
    name = sandbox.job("envvar")
    assert_refused(sandbox, ["install", name, "--no-start", *CMD], "unknown kind",
                   env=sandbox.env({"WATCHDOG_SINGLETON_CLUSTER": "redis://db"}))
    with_env = sandbox.env({"WATCHDOG_SINGLETON_CLUSTER": NOWHERE})
    assert_refused(sandbox, ["install", name, "--no-start", "--cluster", "none", "--rotate", *CMD],
                   "--rotate is for cluster jobs", env=with_env)
    sandbox.ok("install", name, "--no-start", "--standby", *CMD, env=with_env)
    stored = read_job(sandbox, name)
    assert (stored["cluster"], stored["standby"], stored["lease"]) == (NOWHERE, True, 60.0)


def read_job(box: Sandbox, name: str) -> dict[str, Any]:
    with open(os.path.join(box.state_root, "jobs", f"{name}.json")) as fh:
        data: dict[str, Any] = json.load(fh)
    return data


def test_a_cluster_job_without_psycopg_is_refused_in_one_line(sandbox: Sandbox) -> None:
    name = sandbox.job("nodriver")
    before = sandbox.crontab()
    script = ("import sys; sys.modules['psycopg'] = None; from watchdog_singleton.__main__ import main; "
              "main(sys.argv[1:])")
    proc = sandbox.run_as([sys.executable, "-c", script, "install", name, "--no-start", "--cluster", NOWHERE, *CMD])
    assert (proc.returncode, proc.stderr) == (2, f"watchdog-singleton: {NEED_PSYCOPG}\n")
    assert sandbox.crontab() == before and not os.path.exists(os.path.join(sandbox.state_root, "jobs", f"{name}.json"))
    # The same interpreter without a cluster needs no driver.
    proc = sandbox.run_as([sys.executable, "-c", script, "install", name, "--no-start", "--schedule", QUIET_SCHEDULE,
                           *CMD])
    assert proc.returncode == 0, proc.stderr


def test_a_cluster_jobs_crontab_line_finds_psycopg_the_way_cron_runs_it_and_holds_no_password(
        sandbox: Sandbox) -> None:
    name = sandbox.job("line")
    proc = sandbox.ok("install", name, "--no-start", "--cluster", NOWHERE, "--lease", "90", "--rotate", *CMD)
    assert "--grace" not in proc.stderr  # the default --grace (10 s) fits a 90 s lease (30 - 5 - 1 s)
    tick = sandbox.tick_command(name)
    launcher = tick[tick.index("exec ") + 5:].split(" -m watchdog_singleton")[0]  # PY [-I|-P]
    probe = subprocess.run(["/bin/sh", "-c", f"cd / && exec {launcher} -c 'import psycopg'"], env=sandbox.cron_env(),
                           capture_output=True, text=True, **sandbox.user.popen_kwargs())
    assert probe.returncode == 0, (launcher, probe.stderr)
    assert NOWHERE not in tick  # the launcher reads the URL from the definition, never from the line
    stored = read_job(sandbox, name)
    assert (stored["cluster"], stored["lease"], stored["rotate"], stored["standby"]) == (NOWHERE, 90.0, True, False)


def test_a_grace_longer_than_the_lease_allows_is_warned_about(sandbox: Sandbox) -> None:
    name = sandbox.job("grace")
    proc = sandbox.ok("install", name, "--no-start", "--cluster", NOWHERE, "--lease", "12", "--grace", "30", *CMD)
    # lease 12: give up after 8 s, one attempt 1 s: 3 s to stop the tree, 1 s of it for SIGKILL to land
    warned = [line for line in proc.stderr.splitlines() if "--grace" in line]
    assert len(warned) == 1 and "--grace 30 s is cut to 2 s" in warned[0], proc.stderr


# -- the config file ----------------------------------------------------------------------------------

def test_cluster_keys_round_trip_through_export_and_apply_parsing(tmp_path: Any, monkeypatch: Any) -> None:
    monkeypatch.delenv("WATCHDOG_SINGLETON_CLUSTER", raising=False)
    job = Job(name="sweep", command=["/bin/true"], workdir="/srv", periodic=True, every=300.0, sync=True,
              cluster=NOWHERE, lease=45.0, standby=True, rotate=True, lock_dir="/tmp/lk",
              stdout_log="/d/sweep.stdout.log", stderr_log="/d/sweep.stderr.log")
    text = config.dump([job], "/d", "/tmp/lk")
    assert f'cluster = "{NOWHERE}"' in text and "lease = 45" in text and "sync = true" in text
    path = tmp_path / "jobs.toml"
    path.write_text(text)
    cfg = config.load(str(path))
    req = cfg.request(cfg.jobs[0])
    assert (req.cluster, req.lease, req.standby, req.rotate, req.sync, req.every) == (
        NOWHERE, 45, True, True, True, 300)
    plain = Job(name="web", command=["/bin/true"], workdir="/srv", lock_dir="/tmp/lk")
    assert "cluster" not in config.job_table(plain, "/d", "/tmp/lk")
    monkeypatch.setenv("WATCHDOG_SINGLETON_CLUSTER", NOWHERE)  # apply from this shell must not make it one
    assert config.job_table(plain, "/d", "/tmp/lk")["cluster"] == "none"


def test_cluster_keys_in_defaults_and_their_errors_name_file_line_job_key(tmp_path: Any) -> None:
    path = tmp_path / "jobs.toml"
    path.write_text(f'[defaults]\ncluster = "{NOWHERE}"\nlease = 30\n[jobs.a]\ncommand = "x"\nstandby = true\n')
    cfg = config.load(str(path))
    req = cfg.request(cfg.jobs[0])
    assert (req.cluster, req.lease, req.standby) == (NOWHERE, 30, True)
    path.write_text('[jobs.a]\ncommand = "x"\nlease = "long"\n')
    with pytest.raises(config.ConfigError, match=r"jobs.toml:3: job a, key lease: must be a number"):
        config.load(str(path))
    assert config.option_to_key("--lease is for cluster jobs: add --cluster postgresql://USER@HOST/DB (or set X)") \
        == ("lease", 'lease is for cluster jobs: add cluster = "postgresql://USER@HOST/DB" (or set X)')
    assert config.option_to_key("--sync is for periodic jobs: add --periodic (or --every SECONDS)")[0] == "sync"
    assert config.option_to_key("cluster 'mysql://x': unknown kind; use postgresql://USER@HOST/DB")[0] == "cluster"


def test_a_change_of_any_cluster_setting_needs_a_restart() -> None:
    old = Job(name="a", command=["/bin/sleep", "1"], workdir="/", lock_dir="/tmp/l", periodic=True, every=60.0,
              cluster=NOWHERE)
    for change in ({"cluster": ""}, {"cluster": NOWHERE + "2"}, {"lease": 30.0}, {"standby": True},
                   {"rotate": True}, {"sync": True}):
        assert needs_restart(old, Job.from_dict({**old.to_dict(), **change})), change


def test_every_cluster_option_is_a_key_of_the_file() -> None:
    targets = {target for target, _ in config.KEYS.values() if target}
    assert {"cluster", "lease", "standby", "rotate", "sync"} <= targets <= set(InstallRequest.__dataclass_fields__)


def write_toml(box: Sandbox, text: str) -> str:
    path = box.path("jobs.toml")
    with open(path, "w") as fh:
        fh.write(text)
    os.chown(path, box.user.uid, box.user.gid)
    return path


def test_apply_of_a_bad_cluster_key_changes_nothing_and_export_then_apply_is_a_no_op(sandbox: Sandbox) -> None:
    a, b = sandbox.job("a"), sandbox.job("b")
    bad = write_toml(sandbox, f'[jobs.{a}]\ncommand = "/bin/sleep 1000"\nenable = false\nrotate = true\n')
    assert_refused(sandbox, ["apply", bad], f"job {a}, key rotate: rotate = true is for cluster jobs")
    sandbox.ok("install", a, "--no-start", "--cluster", NOWHERE, "--lease", "20", "--standby", *CMD)
    sandbox.ok("install", b, "--no-start", "--cluster", NOWHERE, "--periodic", "--sync", "--schedule", "*/5 * * * *",
               *CMD)
    exported = sandbox.ok("export", a, b).stdout
    assert "standby = true" in exported and "sync = true" in exported and "lease = 20" in exported
    again = write_toml(sandbox, exported)
    before = (sandbox.crontab(), read_job(sandbox, a), read_job(sandbox, b))
    plan = sandbox.ok("apply", again).stdout
    assert "plan: 0 create, 0 update, 0 restart, 0 remove, 2 unchanged" in plan, plan
    after = (sandbox.crontab(), read_job(sandbox, a), read_job(sandbox, b))
    assert after == before


# -- submit -------------------------------------------------------------------------------------------

def test_submit_carries_the_cluster_options_into_the_batch_scripts_run_line(sandbox: Sandbox) -> None:
    name = sandbox.job("batch")
    proc = sandbox.ok("submit", name, "--scheduler", "pbs", "--dry-run", "--cluster", NOWHERE, "--lease", "30",
                      "--standby", "--", "sleep", "100")
    line = next(x for x in proc.stdout.splitlines() if " run --state-dir " in x)
    words = shlex.split(line.removesuffix(" &"))
    args = parse_run(words[words.index("run") + 1:])
    assert (args.cluster, args.lease, args.standby, args.rotate, args.name) == (NOWHERE, 30.0, True, False, name)
    plain = sandbox.ok("submit", name, "--scheduler", "pbs", "--dry-run", "--", "sleep", "100")
    assert "--cluster" not in plain.stdout
    # Slurm hands the submitter's environment to the node: "none" must be said on the line.
    env = sandbox.env({"WATCHDOG_SINGLETON_CLUSTER": NOWHERE})
    none = sandbox.ok("submit", name, "--scheduler", "pbs", "--dry-run", "--cluster", "none", "--", "sleep", "100",
                      env=env)
    assert "--restart always --cluster none " in none.stdout
    for args_, needle in ((["--standby"], "--standby is for cluster jobs"),
                          (["--cluster", NOWHERE, "--lease", "1"], "--lease 1")):
        bad = sandbox.ws("submit", name, "--scheduler", "pbs", *args_, "--", "sleep", "100")
        assert bad.returncode == 2 and needle in bad.stderr and bad.stderr.count("\n") == 1, bad.stderr


# -- status -------------------------------------------------------------------------------------------

@pytest.fixture
def engine(pg_cluster: PgCluster) -> Iterator[PostgresLease]:
    lease = open_cluster(pg_cluster.url_with_passfile, Timing(), holder="host-a:boot:123:456", host="host-a")
    assert isinstance(lease, PostgresLease)
    yield lease
    lease.close()


def save_state(box: Sandbox, name: str, **fields: Any) -> None:
    """Write NAME's run state as the test user, the way the launcher would."""
    script = ("import json, sys; from watchdog_singleton.state.store import RunState, StateStore; "
              "store = StateStore(sys.argv[1]); "
              "assert store.save(RunState(name=sys.argv[2], **json.loads(sys.argv[3]))), store.last_error")
    proc = box.run_as([sys.executable, "-c", script, box.state_root, name, json.dumps(fields)])
    assert proc.returncode == 0, proc.stderr


def test_status_shows_holder_token_expiry_hosts_turn_and_this_hosts_role_from_the_database(
        sandbox: Sandbox, pg_cluster: PgCluster, engine: PostgresLease) -> None:
    name = sandbox.job(f"held-{secrets.token_hex(2)}")
    url = str(pg_cluster)  # no password: the test user's ~/.pgpass has it
    sandbox.ok("install", name, "--no-start", "--cluster", url, "--rotate", "--lease", "60", *CMD)
    grant = engine.acquire(name)
    assert grant is not None
    engine.heartbeat(name)
    other = open_cluster(pg_cluster.url_with_passfile, Timing(), holder="host-b:boot:9:9", host="host-b")
    try:
        other.heartbeat(name)
    finally:
        other.close()
    save_state(sandbox, name, phase="standby", lease_role="standby", lease_holder=grant.holder,
               lease_checked_at="2026-01-01T00:00:00")
    info = sandbox.status(name)
    cluster = info["cluster"]
    assert cluster["url"] == url and cluster["rotate"] and cluster["lease_seconds"] == 60
    assert (cluster["role"], cluster["holder_seen"], cluster["database_problem"]) == ("standby", grant.holder, "")
    db = cluster["database"]
    assert (db["holder"], db["token"], db["live"], db["hosts"], db["turn"]) == (
        grant.holder, grant.token, True, ["host-a", "host-b"], "host-a")
    assert 50 < db["seconds_left"] <= 60 and db["expires_at"] == grant.expires_at and db["acquired_at"]
    assert info["phase"] == "standby"  # runs on another host: not "dead"
    text = sandbox.ws("status", name).stdout
    line = next(x for x in text.splitlines() if x.startswith("  cluster "))
    assert f"held by host-a, token {grant.token}, until {grant.expires_at[11:19]}" in line, line
    assert "this host standby (held by host-a)" in line and "hosts seen host-a, host-b" in line
    assert "turn host-a" in line and "last start " in line
    assert engine.release(grant)
    line = next(x for x in sandbox.ws("status").stdout.splitlines() if x.startswith("  cluster "))
    assert f"free (last holder host-a, token {grant.token}" in line, line


def test_status_of_a_cluster_job_nobody_ran_yet_says_so(sandbox: Sandbox, pg_cluster: PgCluster,
                                                        engine: PostgresLease) -> None:
    engine.ensure_schema()
    name = sandbox.job("fresh")
    sandbox.ok("install", name, "--no-start", "--cluster", str(pg_cluster), *CMD)
    info = sandbox.status(name)
    assert info["cluster"]["database"] is None and info["cluster"]["database_problem"] == ""
    assert "no host has held it yet; this host not yet asked" in sandbox.ws("status", name).stdout


def test_status_with_an_unreachable_database_is_one_line_and_still_shows_the_local_state(sandbox: Sandbox) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        url = f"postgresql://ws@127.0.0.1:{closed.getsockname()[1]}/ws"
        a, b = sandbox.job("gone-a"), sandbox.job("gone-b")
        for name in (a, b):
            sandbox.ok("install", name, "--no-start", "--cluster", url, *CMD)
        save_state(sandbox, a, phase="standby", lease_role="standby", lease_problem="cannot reach it at 12:00")
        started = time.monotonic()
        proc = sandbox.ws("status")
        took = time.monotonic() - started
        assert proc.returncode == 0 and proc.stderr == "" and "Traceback" not in proc.stdout, proc.stderr
        lines = proc.stdout.splitlines()
        row = next(i for i, x in enumerate(lines) if x.startswith(a + " "))
        assert "standby" in lines[row]  # the local state, as without a cluster
        problem = lines[row + 1]
        assert problem.startswith(f"  cluster {url}: cannot reach cluster database"), problem
        assert "last problem: cannot reach it at 12:00" in problem
        assert sum("cannot reach cluster database" in x for x in lines) == 2  # one line per job, no more
        assert took < 10, f"status took {took:.1f} s"
        info = sandbox.status(b)
        assert info["cluster"]["database"] is None and "cannot reach" in info["cluster"]["database_problem"]
        assert info["name"] == b and info["installed"]


@pytest.mark.parametrize("option", ["--standby", "--rotate"])
def test_run_refuses_a_cluster_option_without_a_cluster(option: str, capsys: pytest.CaptureFixture[str],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from watchdog_singleton.tick import launch

    monkeypatch.delenv("WATCHDOG_SINGLETON_CLUSTER", raising=False)
    assert launch.main(["adhoc", option, "--", "/bin/true"]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [f"watchdog-singleton: {option} is for cluster jobs: add --cluster "
                                        "postgresql://USER@HOST/DB (or set WATCHDOG_SINGLETON_CLUSTER)"]


def test_lease_check_of_an_unknown_job_is_no_such_job_and_lease_status_names_the_holder_as_status_does(
        sandbox: Sandbox, pg_cluster: PgCluster, engine: PostgresLease) -> None:
    engine.ensure_schema()
    url = str(pg_cluster)  # no password: the test user's ~/.pgpass has it
    unknown = sandbox.ws("lease", "check", sandbox.job("never-granted"), "--token", "1", "--cluster", url)
    assert unknown.returncode == 4 and unknown.stderr.count("\n") == 1, unknown.stderr
    assert "no such job" in unknown.stderr and "stale" not in unknown.stderr
    name = sandbox.job(f"named-{secrets.token_hex(2)}")
    sandbox.ok("install", name, "--no-start", "--cluster", url, *CMD)
    grant = engine.acquire(name)
    assert grant is not None
    shown = sandbox.ws("lease", "status", name, "--cluster", url).stdout
    line = next(x for x in sandbox.ws("status", name).stdout.splitlines() if x.startswith("  cluster "))
    held = f"held by host-a, token {grant.token}, until {grant.expires_at[11:19]}"
    assert held in shown and held in line, (shown, line)
    # From a shell, an installed job's own database is the default: no --cluster, no variable.
    assert sandbox.ws("lease", "check", name, "--token", str(grant.token)).returncode == 0
    assert engine.release(grant)
    stale = sandbox.ws("lease", "check", name, "--token", str(grant.token))
    assert stale.returncode == 1 and "stale" in stale.stderr, stale.stderr


def test_status_flags_a_cluster_holder_whose_supervisor_is_gone(sandbox: Sandbox) -> None:
    from watchdog_singleton.proc import procs

    name = sandbox.job("orphan")
    sandbox.ok("install", name, "--no-start", "--cluster", "postgresql://nobody@127.0.0.1:9/ws", *CMD)
    dead = subprocess.Popen(["true"])
    dead_start = procs.start_time(dead.pid)
    dead.wait()
    daemon = subprocess.Popen(["sleep", "60"])
    try:
        save_state(sandbox, name, phase="running", boot_id=procs.boot_id(), supervisor_pid=dead.pid,
                   supervisor_start=dead_start, pid=daemon.pid, pid_start=procs.start_time(daemon.pid),
                   lease_role="holder", lease_token=7)
        text = sandbox.ws("status", name).stdout
        row = next(x for x in text.splitlines() if x.startswith(name))
        assert "running (supervisor gone)" in row, text
        assert "this host supervisor gone (was holder, token 7)" in text, text
        assert sandbox.status(name)["cluster"]["supervisor"] == "gone"
    finally:
        daemon.kill()
        daemon.wait()
