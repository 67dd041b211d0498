"""Cluster jobs end to end on one machine: the real launcher, resident supervisor and PostgreSQL
(tests/kits/pgkit.py), as the unprivileged test user. Two "hosts" here share the machine's name but
have their own lock and state folders, which is all the flock and the lease look at; hosts with
their own names and networks, and the faults, are in test_cluster_hosts.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from functools import partial
from typing import TYPE_CHECKING, Any, Optional

from conftest import Sandbox, wait_for
from userkit import poll_until

from watchdog_singleton.cluster import Timing
from watchdog_singleton.job.model import Job, JobStore
from watchdog_singleton.state.store import RunState, StateStore

if TYPE_CHECKING:
    from pgkit import PgCluster

pytest_plugins = ["pgkit"]

LEASE = 6.0
TIMING = Timing.for_lease(LEASE)


class Host:
    """One host's folders in the sandbox: its own state home, lock and log folders."""

    def __init__(self, box: Sandbox, label: str, url: str) -> None:
        self.box, self.label, self.url = box, label, url
        self.home = box.mkdir(label, "state")
        self.locks = box.mkdir(label, "locks")
        self.logs = box.mkdir(label, "logs")

    def env(self) -> dict[str, str]:
        return self.box.env({"XDG_STATE_HOME": self.home})

    def run(self, name: str, *options: str, command: str) -> Any:
        return self.box.ws("run", name, "--detach", "--cluster", self.url, "--lease", f"{LEASE:g}",
                           "--lock-dir", self.locks, "--log-dir", self.logs, *options, "--", "/bin/sh", "-c",
                           command, env=self.env())

    def state(self, name: str) -> Optional[RunState]:
        root = os.path.join(self.home, "watchdog-singleton", os.uname().nodename)
        return StateStore(root).load(name)


def token_writer(box: Sandbox, label: str) -> str:
    """A daemon that writes its fencing token to a file named after its host, then stays."""
    return f'echo "$WATCHDOG_SINGLETON_FENCING_TOKEN" > {box.path(label + ".token")}; exec sleep 1000'


def read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except FileNotFoundError:
        return ""


def test_one_copy_across_two_hosts_and_a_standby_takes_over_after_kill_9(sandbox: Sandbox,
                                                                         pg_cluster: PgCluster) -> None:
    name = sandbox.job("across")
    a, b = Host(sandbox, "a", str(pg_cluster)), Host(sandbox, "b", str(pg_cluster))
    started = a.run(name, command=token_writer(sandbox, "a"))
    assert started.returncode == 0, started.stderr
    assert wait_for(lambda: read(sandbox.path("a.token")), 10)
    first = int(read(sandbox.path("a.token")))
    state_a = a.state(name)
    assert state_a is not None and state_a.lease_role == "holder" and state_a.lease_token == first

    # Another host's tick: one short query, no start, exit 0 and one line.
    refused = b.run(name, command=token_writer(sandbox, "b"))
    assert refused.returncode == 0, refused.stderr
    assert "not started here: held by" in refused.stdout
    assert read(sandbox.path("b.token")) == ""

    # A standby waits; kill -9 of the holder's supervisor and daemon hands it over.
    waiting = b.run(name, "--standby", command=token_writer(sandbox, "b"))
    assert waiting.returncode == 0 and "standing by" in waiting.stdout, waiting.stdout + waiting.stderr
    assert state_a.supervisor_pid and state_a.pid
    for pid in (state_a.supervisor_pid, state_a.pid):
        os.kill(pid, signal.SIGKILL)
    assert wait_for(lambda: read(sandbox.path("b.token")), LEASE + TIMING.retry + 5)
    assert int(read(sandbox.path("b.token"))) == first + 1
    state_b = b.state(name)
    assert state_b is not None and state_b.lease_role == "holder" and state_b.supervisor_pid
    os.kill(state_b.supervisor_pid, signal.SIGTERM)
    assert wait_for(lambda: (b.state(name) is None or b.state(name).phase != "running"), 20)  # type: ignore[union-attr]

    # The standby released the lease at its exit: host a starts at once, with the next token.
    again = a.run(name, command=token_writer(sandbox, "a"))
    assert again.returncode == 0 and "running" in again.stdout, again.stdout + again.stderr
    assert wait_for(lambda: read(sandbox.path("a.token")) == str(first + 2), 10)
    state_a = a.state(name)
    assert state_a is not None and state_a.supervisor_pid
    os.kill(state_a.supervisor_pid, signal.SIGTERM)


def test_an_unreachable_database_starts_nothing_and_says_so_in_one_line(sandbox: Sandbox) -> None:
    name = sandbox.job("nodb")
    a = Host(sandbox, "a", "postgresql://nobody@127.0.0.1:1/nowhere")
    proc = a.run(name, command=token_writer(sandbox, "a"))
    assert proc.returncode == 1, proc.stderr
    assert "cannot reach cluster database" in proc.stderr and proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert read(sandbox.path("a.token")) == ""


# -- hosts with names of their own: sync and rotation ------------------------------------------
# Each "host" runs the launcher in a UTS namespace of its own (its own os.uname().nodename, as
# root; then setpriv drops to the test user), with its own state folder and lock folder. The
# job is defined in each host's state folder, and each host runs the line cron would: run --cron.

def as_host(box: Sandbox, host: str, argv: list[str], env: dict[str, str]) -> Any:
    user = box.user
    script = ('hostname "$0" && uid=$1 gid=$2 && shift 2 && '
              'exec setpriv --reuid "$uid" --regid "$gid" --clear-groups -- "$@"')
    return subprocess.run(["unshare", "--uts", "sh", "-c", script, host, str(user.uid), str(user.gid), *argv],
                          env=env, cwd=box.dir, capture_output=True, text=True, timeout=60)


def define(box: Sandbox, host: str, url: str, name: str, command: str, **options: Any) -> str:
    """NAME's definition in HOST's state folder; its root (what cron's line passes)."""
    home = box.mkdir(host, "state")
    root = os.path.join(home, "watchdog-singleton", host)
    locks = box.mkdir(host, "locks")
    logs = box.mkdir(host, "logs")
    job = Job(name=name, command=["/bin/sh", "-c", command], workdir=box.dir, lock_dir=locks,
              stdout_log=os.path.join(logs, f"{name}.out"), stderr_log=os.path.join(logs, f"{name}.err"),
              cluster=url, lease=LEASE, state_folder=os.path.join(root, "job-state", name), **options)
    JobStore(root).save(job)
    for folder, _dirs, files in os.walk(home):
        for entry in [folder, *(os.path.join(folder, f) for f in files)]:
            os.chown(entry, box.user.uid, box.user.gid)
    return root


def tick(box: Sandbox, host: str, root: str, name: str) -> None:
    proc = as_host(box, host, [sys.executable, "-I", "-m", "watchdog_singleton", "run", "--cron",
                               "--state-dir", root, name], box.cron_env())
    assert proc.returncode == 0 and proc.stdout == "" and proc.stderr == "", proc.stdout + proc.stderr


def runs_in(path: str) -> list[tuple[str, float, float]]:
    """(host, start, end) of each finished run the daemons wrote."""
    starts: dict[str, float] = {}
    done = []
    for line in read(path).splitlines():
        host, what, when = line.split()
        if what == "start":
            starts[host] = float(when)
        elif host in starts:
            done.append((host, starts.pop(host), float(when)))
    return sorted(done, key=lambda run: run[1])


def stop_supervisors(box: Sandbox, roots: list[str], name: str) -> None:
    for root in roots:
        state = StateStore(root).load(name)
        if state is not None and state.supervisor_pid and state.supervisor_alive():
            os.kill(state.supervisor_pid, signal.SIGTERM)


RUN = 'echo "$(hostname) start $(date +%s.%N)" >> {log}; sleep 0.3; echo "$(hostname) end $(date +%s.%N)" >> {log}'


def test_sync_runs_once_per_period_across_hosts_and_never_two_at_once(sandbox: Sandbox,
                                                                     pg_cluster: PgCluster) -> None:
    name = sandbox.job("sync")
    log = sandbox.path("runs.log")
    roots = [define(sandbox, host, str(pg_cluster), name, RUN.format(log=log), periodic=True, every=2.0,
                    sync=True, restart="never") for host in ("hosta", "hostb")]
    try:
        tick(sandbox, "hosta", roots[0], name)
        # hostb's due times fall between hosta's runs: it gets the lease, then finds no slot.
        assert wait_for(lambda: len(runs_in(log)) >= 1, 10)
        tick(sandbox, "hostb", roots[1], name)
        assert wait_for(lambda: len(runs_in(log)) >= 5, 30)
    finally:
        stop_supervisors(sandbox, roots, name)
    runs = runs_in(log)
    starts = [start for _host, start, _end in runs]
    for (_h1, _s1, end), (_h2, start, _e2) in zip(runs, runs[1:]):
        assert start >= end, f"two runs at once: {runs}"
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    assert min(gaps) >= 2.0 - 0.2 - 0.05, f"two starts within one period: {runs}"  # period less the slack
    b = StateStore(roots[1]).load(name)
    assert b is not None and b.skipped >= 2, b  # hostb's due times found each period's run started
    assert {entry.get("why") for entry in b.history if entry["result"] == "skipped"} == \
        {"this period's run already started on another host"}


def test_rotation_visits_every_live_host_in_name_order(sandbox: Sandbox, pg_cluster: PgCluster) -> None:
    name = sandbox.job("rotate")
    log = sandbox.path("runs.log")
    hosts = ("hosta", "hostb", "hostc")
    roots = [define(sandbox, host, str(pg_cluster), name, RUN.format(log=log), periodic=True, every=2.0,
                    rotate=True, restart="never") for host in hosts]
    cycle = ["hosta", "hostb", "hostc", "hosta", "hostb", "hostc"]

    def order() -> list[str]:
        return [host for host, _start, _end in runs_in(log)]

    def cycled() -> bool:
        # Until every host beats, the turn may stay with those already up (a host ticked first may
        # run twice): the rotation is judged once all three are live, as two whole rounds in order.
        seen = order()
        return any(seen[i:i + len(cycle)] == cycle for i in range(len(seen)))
    try:
        for host, root in zip(hosts, roots):
            tick(sandbox, host, root, name)
        assert poll_until(cycled, 60, 0.2), order()
    finally:
        stop_supervisors(sandbox, roots, name)


def test_the_fencing_recipe_works_inside_the_daemon_with_only_what_the_job_gives_it(sandbox: Sandbox,
                                                                                    pg_cluster: PgCluster) -> None:
    """docs/cluster.md's `watchdog-singleton lease check NAME --token "$WATCHDOG_SINGLETON_FENCING_TOKEN"`,
    run by a real daemon whose environment names no database (the launcher's had none either):
    0 for its own token, 1 for the token of the run before it."""
    name = sandbox.job("fence")
    a = Host(sandbox, "a", str(pg_cluster))
    out = sandbox.path("checks")
    check = 'watchdog-singleton lease check "$WATCHDOG_SINGLETON_JOB" --token'
    mine = '"$WATCHDOG_SINGLETON_FENCING_TOKEN"'
    command = (f'{check} {mine} 2>>{out}.err; echo "$WATCHDOG_SINGLETON_FENCING_TOKEN current $?" >> {out}; '
               f'{check} $(($WATCHDOG_SINGLETON_FENCING_TOKEN - 1)) 2>>{out}.err; '
               f'echo "$WATCHDOG_SINGLETON_FENCING_TOKEN previous $?" >> {out}; exec sleep 1000')
    env = sandbox.env({"XDG_STATE_HOME": a.home}, path=f"{os.path.dirname(sys.executable)}:/usr/bin:/bin")
    assert "WATCHDOG_SINGLETON_CLUSTER" not in env
    def checks(count: int) -> bool:
        return read(out).count("previous") == count

    for run in (1, 2):
        started = sandbox.ws("run", name, "--detach", "--cluster", a.url, "--lease", f"{LEASE:g}", "--lock-dir",
                             a.locks, "--log-dir", a.logs, "--", "/bin/sh", "-c", command, env=env)
        assert started.returncode == 0, started.stderr
        assert wait_for(partial(checks, run), 20), (read(out), read(out + ".err"))
        state = a.state(name)
        assert state is not None and state.supervisor_pid
        if run == 1:
            os.kill(state.supervisor_pid, signal.SIGTERM)  # it releases the lease: the next run gets a newer token
            assert wait_for(partial(gone, state), 15)
    second = read(out).splitlines()[2:]
    token = int(second[0].split()[0])
    assert second == [f"{token} current 0", f"{token} previous 1"], (read(out), read(out + ".err"))
    assert "stale" in read(out + ".err")
    final = a.state(name)
    assert final is not None and final.supervisor_pid
    os.kill(final.supervisor_pid, signal.SIGTERM)
    assert wait_for(partial(gone, final), 15)


def gone(state: RunState) -> bool:
    return not state.supervisor_alive()
