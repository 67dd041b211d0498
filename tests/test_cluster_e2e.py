"""Cluster jobs end to end on one machine: the real launcher, resident supervisor and PostgreSQL
(tests/pgkit.py), as the unprivileged test user. Two "hosts" here share the machine's name but
have their own lock and state folders, which is all the flock and the lease look at; hosts with
their own names and networks, and the faults, are in test_cluster_hosts.py."""

from __future__ import annotations

import os
import signal
from typing import TYPE_CHECKING, Any, Optional

from conftest import Sandbox, wait_for

from watchdog_singleton.leases import Timing
from watchdog_singleton.state import RunState, StateStore

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
