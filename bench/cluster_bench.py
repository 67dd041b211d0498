"""Figure 10, cluster jobs (issue 10): python bench/cluster_bench.py [--quick]

Three measurements on a throwaway PostgreSQL (initdb in a temporary folder, like
tests/kits/pgkit.py), with "hosts" that are this machine with their own state, lock and log folders:

(a) the tick of a cluster job, `run NAME --detach --cluster URL ... -- CMD`, on a host whose
    local copy runs (the flock is held: it must cost no database round trip at all) and on a
    host with no local copy while another host holds the lease (one short query), against the
    same line of a job without --cluster whose copy runs. The server's own counters
    (pg_stat_statements, pg_stat_database.sessions) count what each kind of tick sent, over a
    batch of that kind alone;
(b) takeover: kill -9 of the holder's supervisor and daemon, a --standby on another host, the
    time until the standby's daemon runs, against the lease (6 s: within lease + retry, 7 s);
(c) renew load: statements per second that N held jobs send at the default lease (60 s), from
    pg_stat_statements over a window (goal: under 100/s for 100 jobs; --quick holds 10 and
    extrapolates to 100).

Run it as root (it acts as the bench user, `wsbench` unless --user says otherwise); the
bench user's ~/.pgpass holds the password, never a URL. `cluster_figure` has the shape of a
bench/figures.py figure, so run.py lists it as figure 10. With --timer this file is the
bench user's timer of part (a), see `subreaper_timer`.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import pwd
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Optional

import harness
from figures import QUICK, Plan, alone_parser, cpus, judge, run_alone, walls
from harness import (
    CRON_PATH,
    Bench,
    BenchError,
    Row,
    Sample,
    alive,
    alternate,
    compare,
    fmt_time,
    kill_pid,
    median,
    wait_until,
)

HERE = os.path.dirname(os.path.abspath(__file__))
SLEEPER = ["/bin/sleep", "1000000"]
DEFAULT_LEASE = 60.0  # renew every 10 s (Timing.for_lease)
TAKEOVER_LEASE = 6.0  # retry every 1 s: takeover within 7 s
LOAD_GOAL = 100.0  # statements per second for 100 jobs
LOAD_JOBS = {"full": 100, "quick": 10}
LOAD_WINDOW = {"full": 60.0, "quick": 20.0}  # whole renew periods (10 s)
TAKEOVER_REPS = {"full": 5, "quick": 2}
PG_START_WAIT = 60
PR_SET_CHILD_SUBREAPER = 36


# -- the throwaway PostgreSQL -------------------------------------------------------------------
def server_bindir() -> str:
    """The newest installed PostgreSQL server's bin folder; as root, installs Debian's
    `postgresql` first when there is none (as tests/run.sh and tests/kits/pgkit.py do)."""
    def newest() -> Optional[str]:
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
        return os.path.dirname(found[-1]) if found else None

    bindir = newest()
    if bindir is None and os.getuid() == 0:
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], env=env, stdout=subprocess.DEVNULL)
        subprocess.run(["apt-get", "install", "-y", "-qq", "postgresql"], env=env, stdout=subprocess.DEVNULL)
        bindir = newest()
    if bindir is None:
        raise BenchError("no PostgreSQL server here (apt-get install postgresql)")
    return bindir


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class PgServer:
    """initdb, pg_ctl start with pg_stat_statements loaded, a role and database for the bench
    user with its password in the user's ~/.pgpass; `close` undoes all of it."""

    def __init__(self, bench: Bench) -> None:
        self.bench = bench
        self.bindir = server_bindir()
        self.owner = pwd.getpwnam("postgres") if os.getuid() == 0 else pwd.getpwuid(os.getuid())
        self.folder = tempfile.mkdtemp(prefix=f"ws-bench-{bench.tag}-pg-")
        os.chmod(self.folder, 0o711)  # the owner's; others may only reach the socket inside
        if os.getuid() == 0:
            os.chown(self.folder, self.owner.pw_uid, self.owner.pw_gid)
        self.datadir = os.path.join(self.folder, "data")
        self.port = 0
        self.role = self.dbname = bench.user.name
        self.passfile = os.path.join(bench.user.home, ".pgpass")
        self.started = False

    @property
    def url(self) -> str:
        return f"postgresql://{self.role}@127.0.0.1:{self.port}/{self.dbname}"

    def _run(self, argv: list[str], input: Optional[str] = None) -> str:
        as_owner: dict[str, Any] = {}
        if os.getuid() != self.owner.pw_uid:
            as_owner = {"user": self.owner.pw_uid, "group": self.owner.pw_gid, "extra_groups": []}
        proc = subprocess.run(argv, input=input, capture_output=True, text=True, cwd=self.folder,
                              env={"PATH": CRON_PATH, "LANG": "C.UTF-8", "PGTZ": "UTC"},
                              timeout=PG_START_WAIT + 30, **as_owner)
        if proc.returncode != 0:
            raise BenchError(f"{os.path.basename(argv[0])} failed ({proc.returncode}): {proc.stderr.strip()[-300:]}")
        out: str = proc.stdout
        return out

    def psql(self, sql: str, dbname: str = "postgres") -> str:
        """SQL (on stdin) as the superuser over the unix socket: never counted as the bench user's."""
        return self._run([os.path.join(self.bindir, "psql"), "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1",
                          "-h", self.folder, "-p", str(self.port), "-d", dbname, "-f", "-"], input=sql).strip()

    def start(self, max_connections: int) -> None:
        self._run([os.path.join(self.bindir, "initdb"), "-D", self.datadir, "-U", self.owner.pw_name, "--no-sync",
                   "--auth-local=peer", "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8"])
        for attempt in range(3):
            self.port = free_port()
            # track_utility off: the SET LOCAL statement_timeout in front of each request is not
            # counted apart, so one statement counted is one request (one round trip).
            options = (f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off "
                       f"-c max_connections={max_connections} -c shared_preload_libraries=pg_stat_statements "
                       "-c pg_stat_statements.track_utility=off")
            try:
                self._run([os.path.join(self.bindir, "pg_ctl"), "-D", self.datadir, "-l",
                           os.path.join(self.folder, "server.log"), "-o", options, "-w", "-t",
                           str(PG_START_WAIT), "start"])
                break
            except BenchError:
                if attempt == 2:
                    raise
        self.started = True
        password = secrets.token_urlsafe(24)  # url-safe: nothing to escape in .pgpass
        self.psql(f"CREATE ROLE \"{self.role}\" LOGIN PASSWORD '{password}';\n"
                  f"CREATE DATABASE \"{self.dbname}\" OWNER \"{self.role}\";\n"
                  "CREATE EXTENSION pg_stat_statements;\n")
        self._save_pgpass(self._pgpass_lines() + [f"127.0.0.1:{self.port}:{self.dbname}:{self.role}:{password}"])

    def _pgpass_lines(self) -> list[str]:
        try:
            with open(self.passfile) as f:
                return f.read().splitlines()
        except FileNotFoundError:
            return []

    def _save_pgpass(self, lines: list[str]) -> None:
        user = self.bench.user
        tmp = f"{self.passfile}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write("".join(f"{line}\n" for line in lines))
        if os.getuid() == 0:
            os.chown(tmp, user.uid, user.gid)
        os.replace(tmp, self.passfile)

    def close(self) -> None:
        try:
            if self.started:
                pidfile = os.path.join(self.datadir, "postmaster.pid")
                postmaster = int(open(pidfile).readline()) if os.path.exists(pidfile) else 0
                try:
                    self._run([os.path.join(self.bindir, "pg_ctl"), "-D", self.datadir, "-m", "immediate", "-w",
                               "stop"])
                except (BenchError, subprocess.TimeoutExpired):
                    if postmaster:
                        kill_pid(postmaster)  # its children end when it does
        finally:
            if self.port:
                prefix = f"127.0.0.1:{self.port}:"
                lines = self._pgpass_lines()
                if any(line.startswith(prefix) for line in lines):
                    self._save_pgpass([line for line in lines if not line.startswith(prefix)])
            shutil.rmtree(self.folder, ignore_errors=True)

    # -- the server's counters ------------------------------------------------------------------
    def counters(self) -> "Counters":
        """What the bench user's sessions sent to its database so far, by kind of statement."""
        row = self.psql(f"""
            SELECT coalesce(sum(calls) FILTER (WHERE query LIKE '%got AS%'), 0),
                   coalesce(sum(calls) FILTER (WHERE query LIKE '%renewed_at = now()%'
                                               AND query NOT LIKE '%got AS%'), 0),
                   coalesce(sum(calls), 0),
                   (SELECT sessions FROM pg_stat_database WHERE datname = '{self.dbname}'),
                   (SELECT count(*) FROM pg_stat_activity WHERE usename = '{self.role}')
            FROM pg_stat_statements
            WHERE userid = '"{self.role}"'::regrole
              AND dbid = (SELECT oid FROM pg_database WHERE datname = '{self.dbname}')""")
        acquires, renews, statements, sessions, backends = (int(v) for v in row.split("|"))
        return Counters(acquires, renews, statements, sessions, backends, time.monotonic())

    def settled(self, backends: int, timeout: float = 20.0) -> "Counters":
        """The counters once exactly `backends` of the bench user's sessions are left: a session
        that ended has flushed its statistics before it leaves pg_stat_activity."""
        found: list[Counters] = []

        def done() -> bool:
            found.append(self.counters())
            return found[-1].backends == backends

        wait_until(done, timeout, f"{backends} sessions of {self.role} (seen {found[-1].backends if found else '?'})",
                   0.05)
        return found[-1]


@dataclass
class Counters:
    acquires: int
    renews: int
    statements: int
    sessions: int
    backends: int
    at: float

    def minus(self, before: "Counters") -> "Counters":
        return Counters(self.acquires - before.acquires, self.renews - before.renews,
                        self.statements - before.statements, self.sessions - before.sessions,
                        self.backends, self.at - before.at)


# -- hosts ---------------------------------------------------------------------------------------
@dataclass
class Host:
    """One "host": this machine with its own state, lock and log folders (the flock and the
    lease see nothing else)."""

    bench: Bench
    label: str
    state_home: str
    locks: str
    logs: str

    @classmethod
    def make(cls, bench: Bench, label: str) -> "Host":
        # Locks on local /tmp, under the bench's lock folder: its cleanup finds every process
        # that carries one of them in its environment.
        locks = os.path.join(bench.lock_dir, label)
        for path in (bench.lock_dir, locks):
            os.makedirs(path, mode=0o700, exist_ok=True)
            os.chown(path, bench.user.uid, bench.user.gid)
        return cls(bench, label, bench.mkdir("cluster", label, "state"), locks, bench.mkdir("cluster", label, "logs"))

    def env(self) -> dict[str, str]:
        user = self.bench.user
        return {"HOME": user.home, "USER": user.name, "LOGNAME": user.name, "PATH": CRON_PATH,
                "XDG_STATE_HOME": self.state_home}

    def line(self, name: str, cluster: Optional[str], *options: str, command: list[str] = SLEEPER) -> list[str]:
        """The ad-hoc run line a crontab of this host would hold for NAME."""
        where = ["--cluster", cluster] if cluster else []
        return [self.bench.python, "-m", "watchdog_singleton", "run", name, "--detach", *where, *options,
                "--lock-dir", self.locks, "--log-dir", self.logs, "--", *command]

    def run(self, name: str, cluster: Optional[str], *options: str, command: list[str] = SLEEPER,
            expect: str = "") -> Sample:
        sample = self.bench.timed(self.line(name, cluster, *options, command=command), self.env())
        text = sample.output.decode(errors="replace")
        if sample.code != 0 or expect not in text:
            raise BenchError(f"{self.label}: run {name} exited {sample.code} printing {text.strip()[-300:]!r}"
                             + (f" (expected {expect!r})" if expect else ""))
        return sample

    def state(self, name: str) -> dict[str, Any]:
        path = os.path.join(self.state_home, "watchdog-singleton", os.uname().nodename, "run", f"{name}.json")
        try:
            with open(path) as f:
                data: dict[str, Any] = json.load(f)
                return data
        except (OSError, ValueError):
            return {}

    def holding(self, name: str) -> bool:
        st = self.state(name)
        return st.get("lease_role") == "holder" and alive(st.get("pid"))

    def pids(self, name: str) -> list[int]:
        st = self.state(name)
        return [pid for pid in (st.get("supervisor_pid"), st.get("pid")) if pid and alive(pid)]

    def kill(self, name: str, sig: int = signal.SIGKILL) -> list[int]:
        """Signal NAME's supervisor, then its daemon, by the PIDs its state file names."""
        pids = self.pids(name)
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        return pids


def end_jobs(hosts: list[Host], names: list[str]) -> None:
    """Kill by PID every supervisor and daemon of `names` on `hosts`, and wait until they are gone."""
    pids = [pid for host in hosts for name in names for pid in host.kill(name)]
    wait_until(lambda: not any(alive(pid) for pid in pids), 20, "the cluster jobs to end", 0.02)
    hosts[0].bench.reap()


# -- (a) ticks -----------------------------------------------------------------------------------
def subreaper_timer() -> None:
    """As the bench user: time each command with everything it leaves behind.

    Reads {"commands": {NAME: [ARGV, ENV]}, "cwd": DIR, "reps": N, "warmup": W} on stdin, prints
    {NAME: [[wall, cpu, exit code, output], ...]}. A tick on a host with no local copy forks a
    supervisor that asks the database and exits after the tick has returned; as the subreaper,
    this process inherits it, so CPU here is the tick's and that supervisor's (RUSAGE_CHILDREN
    once every descendant is reaped). Wall is the tick's own: what cron waits for.
    """
    import ctypes
    import resource

    job = json.load(sys.stdin)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise SystemExit("prctl(PR_SET_CHILD_SUBREAPER) failed")

    def runner(argv: list[str], env: dict[str, str]) -> Callable[[], Sample]:
        def run() -> Sample:
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            with tempfile.TemporaryFile() as out:
                start = time.perf_counter()
                proc = subprocess.Popen(argv, env=env, cwd=job["cwd"], stdin=subprocess.DEVNULL, stdout=out,
                                        stderr=subprocess.STDOUT)
                _, status, _ = os.wait4(proc.pid, 0)
                wall = time.perf_counter() - start
                proc.returncode = os.waitstatus_to_exitcode(status)
                deadline = time.monotonic() + 30
                while True:  # reap what the tick left running (a supervisor finishing its ask)
                    try:
                        pid, _ = os.waitpid(-1, os.WNOHANG)
                    except ChildProcessError:
                        break
                    if pid == 0:
                        if time.monotonic() > deadline:
                            raise SystemExit(f"{argv[:6]} left a process running for 30 s")
                        time.sleep(0.001)
                after = resource.getrusage(resource.RUSAGE_CHILDREN)
                out.seek(0)
                output = out.read()
            cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
            return Sample(wall, cpu, proc.returncode, output)
        return run

    commands = {name: runner(argv, env) for name, (argv, env) in job["commands"].items()}
    runs = alternate(commands, job["reps"], job["warmup"])
    json.dump({name: [[s.wall, s.cpu, s.code, s.output.decode("latin-1")] for s in samples]
               for name, samples in runs.items()}, sys.stdout)


def time_ticks(bench: Bench, commands: dict[str, tuple[list[str], dict[str, str]]], reps: int,
               warmup: int) -> dict[str, list[Sample]]:
    """Run subreaper_timer as the bench user (no fork of this big process per sample)."""
    userkit = os.path.join(os.pardir, "tests", "kits", "userkit.py")
    for helper in ("harness.py", "figures.py", "cluster_bench.py", userkit):
        bench.copy_helper(os.path.join(HERE, helper))
    job = {"commands": commands, "cwd": bench.user.home, "reps": reps, "warmup": warmup}
    proc = subprocess.run([bench.python, os.path.join(bench.run_dir, "cluster_bench.py"), "--timer"],
                          input=json.dumps(job).encode(), env=bench.cron_env(), cwd=bench.user.home,
                          capture_output=True, timeout=30 * harness.RUN_TIMEOUT, **bench.user.popen_kwargs())
    if proc.returncode != 0:
        raise BenchError(f"the tick timer failed: {proc.stderr.decode(errors='replace')[-500:]}")
    found = json.loads(proc.stdout)
    return {name: [Sample(w, c, code, out.encode("latin-1")) for w, c, code, out in samples]
            for name, samples in found.items()}


def check_output(samples: list[Sample], what: str, text: str) -> None:
    for s in samples:
        out = s.output.decode(errors="replace")
        if s.code != 0 or text not in out:
            raise BenchError(f"{what} exited {s.code} printing {out.strip()[-300:]!r} (expected {text!r})")


def ticks(bench: Bench, pg: PgServer, plan: Plan, a: Host, b: Host) -> list[Row]:
    url = pg.url
    tick, plain = bench_name(bench, "tick"), bench_name(bench, "plain")
    try:
        a.run(tick, url, "--settle", "0", expect="running")
        a.run(plain, None, "--settle", "0", expect="running")
        wait_until(lambda: a.holding(tick) and a.pids(plain), 10, f"{tick} to hold its lease and {plain} to run")
        held = a.state(tick)
        commands = {
            "local": (a.line(tick, url), a.env()),
            "other": (b.line(tick, url), b.env()),
            "plain": (a.line(plain, None), a.env()),
        }
        # Context for the other host's tick: what loading the driver alone costs.
        driver = ([bench.python, "-c", "import psycopg"], a.env())
        # What each kind of tick sends, counted by the server over a batch of that kind alone.
        sent: dict[str, Counters] = {}
        base = pg.settled(1)  # the holder's connection
        for kind in ("local", "other"):
            runs = time_ticks(bench, {kind: commands[kind]}, plan.tick_reps, 0)
            after = pg.settled(1)
            sent[kind] = after.minus(base)
            base = after
        runs = time_ticks(bench, dict(commands, driver=driver), plan.tick_reps, 1)
        check_output(runs["local"], "a tick where the copy runs", "already runs")
        check_output(runs["other"], "a tick on another host", "not started here: held by")
        check_output(runs["plain"], "a keep-alive tick", "already runs")
        now = a.state(tick)
        if now.get("pid") != held.get("pid") or now.get("lease_token") != held.get("lease_token"):
            raise BenchError(f"the ticks disturbed {tick}'s holder: {held.get('pid')}/{held.get('lease_token')} "
                             f"-> {now.get('pid')}/{now.get('lease_token')}")
        if b.pids(tick):
            raise BenchError(f"a tick on host b started {tick} beside host a's copy")
    finally:
        end_jobs([a, b], [tick, plain])
    n = plan.tick_reps
    rows = []
    for kind, pick in (("wall", walls), ("CPU", cpus)):
        ref = pick(runs["plain"])
        rows.append(compare("10", f"cluster tick, local copy runs, {kind}", pick(runs["local"]),
                            "keep-alive tick, no cluster", ref, fmt_time, "about 1x", at_most=1.3))
        rows.append(compare("10", f"cluster tick, another host holds, {kind}" + (" (+ its supervisor)" if kind == "CPU"
                                                                                 else ""),
                            pick(runs["other"]), "keep-alive tick, no cluster", ref, fmt_time, "report"))
        rows.append(compare("10", f"cluster tick, another host holds, {kind}", pick(runs["other"]),
                            f"{bench.python_label} -c 'import psycopg'", pick(runs["driver"]), fmt_time))
    local, other = sent["local"], sent["other"]
    rows.append(judge(Row("10", f"round trips per tick, local copy runs (over {n} ticks)",
                          f"statements {(local.statements - local.renews) / n:g}, connections {local.sessions / n:g}",
                          "holder's renews meanwhile", str(local.renews), n=n),
                      local.statements - local.renews == 0 and local.sessions == 0, "0"))
    rows.append(judge(Row("10", f"round trips per tick, another host holds (over {n} ticks)",
                          f"statements {(other.statements - other.renews) / n:g}, connections {other.sessions / n:g}",
                          "of which acquires", f"{other.acquires / n:g}", n=n),
                      other.statements - other.renews == n and other.sessions == n, "1 query"))
    return rows


def bench_name(bench: Bench, base: str) -> str:
    return f"{base}-{bench.tag}"


# -- (b) takeover --------------------------------------------------------------------------------
def standing_by(host: Host, name: str) -> bool:
    return host.state(name).get("phase") == "standby"


def all_gone(pids: list[int]) -> bool:
    return not any(alive(pid) for pid in pids)


def takeover(bench: Bench, pg: PgServer, reps: int, a: Host, b: Host) -> list[Row]:
    """Holder and standby swap `reps` times: kill -9 the holder, time the standby's daemon start."""
    name = bench_name(bench, "take")
    marker = {h.label: os.path.join(bench.run_dir, "cluster", f"{h.label}.started") for h in (a, b)}

    def line(host: Host, *options: str) -> Sample:
        command = ["/bin/sh", "-c", f'echo "$WATCHDOG_SINGLETON_FENCING_TOKEN" > {marker[host.label]}; '
                                    "exec /bin/sleep 1000000"]
        return host.run(name, pg.url, "--lease", f"{TAKEOVER_LEASE:g}", "--settle", "0", *options, command=command,
                        expect="standing by" if options else "running")

    def token(host: Host) -> int:
        try:
            with open(marker[host.label]) as f:
                return int(f.read().strip() or 0)
        except (OSError, ValueError):
            return 0

    took, after_expiry, tokens = [], [], []
    holder, standby = a, b
    try:
        line(holder)
        wait_until(lambda: token(holder) and holder.holding(name), 10, f"{name}'s first holder")
        tokens.append(token(holder))
        for _ in range(reps):
            if os.path.exists(marker[standby.label]):
                os.unlink(marker[standby.label])
            # The standby's retries (every lease/6 s) fall anywhere in the holder's renew cycle,
            # which sets the lease's expiry: without this, each repeat would sample one phase.
            time.sleep(random.uniform(0, TAKEOVER_LEASE / 6))
            line(standby, "--standby")
            wait_until(partial(standing_by, standby, name), 10, f"{name}'s standby")
            time.sleep(random.uniform(0, TAKEOVER_LEASE / 6))  # and the kill anywhere in the standby's cycle
            killed_at = time.monotonic()
            victims = holder.kill(name)
            if len(victims) != 2:
                raise BenchError(f"{name}'s holder on {holder.label} had pids {victims}, not a supervisor and a daemon")
            # The lease's end on the database's clock, as seen from ours (one psql run: +-10 ms).
            asked = time.monotonic()
            left = float(pg.psql(f"SELECT extract(epoch FROM expires_at - clock_timestamp()) FROM ws_lease "
                                 f"WHERE name = '{name}'", pg.dbname))
            expires_at = (asked + time.monotonic()) / 2 + left
            wait_until(partial(token, standby), TAKEOVER_LEASE * 7 / 6 + 5, f"{standby.label} to take {name} over")
            started = time.monotonic()
            took.append(started - killed_at)
            after_expiry.append(started - expires_at)
            tokens.append(token(standby))
            wait_until(partial(all_gone, victims), 10, "the killed holder to go")
            holder, standby = standby, holder
    finally:
        end_jobs([a, b], [name])
    if any(t2 <= t1 for t1, t2 in zip(tokens, tokens[1:])):
        raise BenchError(f"fencing tokens did not increase at each takeover: {tokens}")
    retry = TAKEOVER_LEASE / 6
    bound = TAKEOVER_LEASE + retry
    return [
        judge(compare("10", f"takeover after kill -9 of the holder, lease {TAKEOVER_LEASE:g} s", took,
                      "the lease", [TAKEOVER_LEASE], fmt_time), max(took) <= bound,
              f"<= lease + retry ({bound:g} s)"),
        Row("10", "takeover: slowest of the repeats", fmt_time(max(took)), n=len(took)),
        Row("10", f"takeover: the standby's daemon runs, after the lease expired (retry {retry:g} s)",
            fmt_time(median(after_expiry)), "max", fmt_time(max(after_expiry)), n=len(took)),
    ]


# -- (c) renew load ------------------------------------------------------------------------------
def renew_load(bench: Bench, pg: PgServer, jobs: int, window: float, host: Host) -> list[Row]:
    names = [bench_name(bench, f"load{i:03d}") for i in range(jobs)]
    try:
        start_many(host, names, pg.url)
        wait_until(lambda: all(host.holding(n) for n in names), 60, f"{jobs} jobs to hold their leases", 0.1)
        before = pg.settled(jobs)
        time.sleep(window)  # the measurement: what the held jobs send meanwhile
        sent = pg.settled(jobs).minus(before)
        if not all(host.holding(n) for n in names):
            raise BenchError("a job lost its lease during the renew window")
    finally:
        end_jobs([host], names)
    rate = sent.statements / sent.at
    per_100 = rate * 100 / jobs
    rows = [
        Row("10", f"renew load: {jobs} jobs held, lease {DEFAULT_LEASE:g} s, statements/s", f"{rate:.2f}/s",
            "renews/s", f"{sent.renews / sent.at:.2f}/s", n=sent.statements),
        Row("10", "renew load: new connections in the window", str(sent.sessions), "connections held",
            str(sent.backends), n=1),
    ]
    what = "renew load for 100 jobs" + (f" (extrapolated from {jobs})" if jobs != 100 else "")
    rows.append(judge(Row("10", what, f"{per_100:.1f}/s", n=sent.statements), per_100 < LOAD_GOAL,
                      f"< {LOAD_GOAL:g}/s"))
    return rows


def start_many(host: Host, names: list[str], url: str, parallel: int = 8) -> None:
    """Start the jobs, `parallel` launchers at a time."""
    bench = host.bench
    pending = list(names)
    running: list[tuple[str, subprocess.Popen[bytes]]] = []
    while pending or running:
        while pending and len(running) < parallel:
            name = pending.pop(0)
            running.append((name, subprocess.Popen(host.line(name, url, "--settle", "0"), env=host.env(),
                                                   cwd=bench.user.home, stdin=subprocess.DEVNULL,
                                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                                   **bench.user.popen_kwargs())))
        name, proc = running.pop(0)
        out, _ = proc.communicate(timeout=harness.RUN_TIMEOUT)
        if proc.returncode != 0 or b"running" not in out:
            raise BenchError(f"run {name} exited {proc.returncode}: {out.decode(errors='replace').strip()[-300:]}")


# -- the figure ----------------------------------------------------------------------------------
def cluster_figure(bench: Bench, plan: Plan) -> list[Row]:
    mode = "quick" if plan is QUICK else "full"
    jobs = LOAD_JOBS[mode]
    pg = PgServer(bench)
    try:
        pg.start(max_connections=jobs + 50)
        a, b = Host.make(bench, "host-a"), Host.make(bench, "host-b")
        rows = ticks(bench, pg, plan, a, b)
        rows += takeover(bench, pg, TAKEOVER_REPS[mode], a, b)
        rows += renew_load(bench, pg, jobs, LOAD_WINDOW[mode], Host.make(bench, "host-c"))
        return rows
    finally:
        pg.close()


def main(argv: list[str]) -> int:
    p = alone_parser(__doc__.splitlines()[0], "fewer repeats, 10 jobs: proves it works (CI)")
    p.add_argument("--timer", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.timer:
        subreaper_timer()
        return 0
    return run_alone(cluster_figure, args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
