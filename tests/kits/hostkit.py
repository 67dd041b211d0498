"""Several hosts on this one machine, for the cluster tests and the cluster soak.

    net = Network.create(pg_cluster)       # a bridge; PostgreSQL also listens on it
    a = net.add_host(box, "hosta")         # a network namespace, a veth on the bridge, a name
    a.run([...])                           # as the test user, in the namespace, as host "hosta"
    a.partition(); a.heal()                # packets dropped (not refused), as on a real partition
    net.close()                            # namespaces, veths, bridge, the server's extra address

Each host has its own network namespace (reaching the database only through its veth and the
bridge), its own host name (a UTS namespace per command: os.uname().nodename is the host's),
and its own state, lock and log folders. Commands run as the unprivileged test user; the
database password is in that user's ~/.pgpass (pgkit), never in a URL.

Why these means: a partition is the root-side veth taken down, so the host's packets are
dropped and its TCP connections hang until their timeouts, as on a cut network (a refused
connection would be kinder than reality). The daemons record their runs on the machine's one
CLOCK_MONOTONIC (tests/kits/helpers/cluster_daemon.py), which all hosts share, so intervals from
different hosts compare exactly.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional

from watchdog_singleton.state.store import RunState, StateStore

if TYPE_CHECKING:
    from conftest import Sandbox
    from pgkit import PgCluster

HELPERS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "helpers")


def netns_problem() -> str:
    """Why hosts cannot be made here ("" when they can): root, ip netns, unshare, setpriv."""
    if os.getuid() != 0:
        return "several hosts on one machine need root (network and UTS namespaces)"
    for tool in ("ip", "unshare", "setpriv"):
        if shutil.which(tool) is None:
            return f"no {tool} here"
    probe = f"wsprobe{secrets.token_hex(2)}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"ip netns add failed: {made.stderr.strip()}"
    try:
        for what, argv in (("a UTS namespace in it", ["ip", "netns", "exec", probe, "unshare", "--uts", "true"]),
                           ("a bridge", ["ip", "link", "add", f"{probe}b", "type", "bridge"]),
                           ("a veth into it", ["ip", "link", "add", f"{probe}v", "type", "veth", "peer", "name",
                                               "eth0", "netns", probe])):
            tried = subprocess.run(argv, capture_output=True, text=True)
            if tried.returncode != 0:
                return f"cannot make {what}: {tried.stderr.strip() or tried.returncode}"
    finally:
        for link in (f"{probe}b", f"{probe}v"):
            subprocess.run(["ip", "link", "del", link], capture_output=True)
        subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return ""


def ip(*args: str) -> None:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {proc.stderr.strip()}")


@dataclass
class Host:
    net: "Network"
    box: "Sandbox"
    name: str
    index: int
    home: str = ""
    locks: str = ""
    logs: str = ""

    @property
    def ns(self) -> str:
        return f"ws{self.net.tag}h{self.index}"

    @property
    def veth(self) -> str:  # the root side, on the bridge
        return f"wsv{self.net.tag}{self.index}"

    @property
    def root(self) -> str:
        """This host's state root (what --state-dir would say)."""
        return os.path.join(self.home, "watchdog-singleton", self.name)

    def argv(self, argv: list[str]) -> list[str]:
        user = self.box.user
        script = ('hostname "$0" && uid=$1 gid=$2 && shift 2 && '
                  'exec setpriv --reuid "$uid" --regid "$gid" --clear-groups -- "$@"')
        return ["ip", "netns", "exec", self.ns, "unshare", "--uts", "sh", "-c", script, self.name,
                str(user.uid), str(user.gid), *argv]

    def env(self, extra: Optional[dict[str, str]] = None) -> dict[str, str]:
        return self.box.env({"XDG_STATE_HOME": self.home, **(extra or {})})

    def run(self, argv: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.argv(argv), env=self.env(), cwd=self.box.dir, capture_output=True, text=True,
                              timeout=timeout)

    def ws(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return self.run([sys.executable, "-m", "watchdog_singleton", *args], timeout=timeout)

    def launch(self, name: str, *options: str, lease: float = 6.0,
               daemon_args: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
        """What a cron tick on this host does for NAME: an ad-hoc detached run of the recording
        daemon under NAME's lock and cluster lease (restarted by its supervisor if it dies)."""
        daemon = [sys.executable, self.net.daemon, self.net.records, self.net.url, name, *daemon_args]
        return self.ws("run", name, "--detach", "--restart", "always", "--settle", "0", "--cluster", self.net.url,
                       "--lease", f"{lease:g}", "--lock-dir", self.locks, "--log-dir", self.logs, "--grace", "2",
                       *options, "--", *daemon)

    def state(self, name: str) -> Optional[RunState]:
        return StateStore(self.root).load(name)

    def tree(self, name: str) -> list[int]:
        """The watcher, the supervisor and the daemon of NAME on this host, as its state records
        them (alive): all its processes of ours, as a whole host would have them."""
        state = self.state(name)
        if state is None:
            return []
        pids = []
        if state.supervisor_pid and state.supervisor_alive():
            watcher = watcher_of(state.supervisor_pid)
            pids.extend([watcher] if watcher else [])
            pids.append(state.supervisor_pid)
        if state.pid and state.daemon_alive():
            pids.append(state.pid)
        return pids

    def supervisor(self, name: str) -> int:
        """NAME's live supervisor on this host (0: none)."""
        state = self.state(name)
        return state.supervisor_pid or 0 if state is not None and state.supervisor_alive() else 0

    def holds(self, pid: int) -> bool:
        """Whether `pid` lives in this host's network namespace."""
        try:
            return os.stat(f"/proc/{pid}/ns/net").st_ino == os.stat(f"/run/netns/{self.ns}").st_ino
        except OSError:
            return False

    def signal_tree(self, name: str, sig: int) -> list[int]:
        pids = self.tree(name)
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        return pids

    def pids(self) -> list[int]:
        """Every process in this host's network namespace (whatever it started, detached or not)."""
        proc = subprocess.run(["ip", "netns", "pids", self.ns], capture_output=True, text=True)
        return [int(word) for word in proc.stdout.split() if word.isdigit()]

    def kill_all(self, timeout: float = 10) -> list[int]:
        """SIGKILL every process in this host's namespace (a stopped one too), by PID, and wait
        until they are gone; the PIDs it killed."""
        killed: list[int] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            left = [pid for pid in self.pids() if pid != os.getpid()]
            if not left:
                break
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                if pid not in killed:
                    killed.append(pid)
            time.sleep(0.05)
        return killed

    def partition(self) -> None:
        ip("link", "set", self.veth, "down")

    def heal(self) -> None:
        ip("link", "set", self.veth, "up")

    def log(self, name: str) -> str:
        try:
            with open(os.path.join(self.logs, f"{name}.stderr.log")) as f:
                return f.read()
        except OSError:
            return ""


@dataclass
class Network:
    pg: "PgCluster"
    tag: str
    subnet_octet: int
    url: str = ""
    records: str = ""
    daemon: str = ""
    hosts: list[Host] = field(default_factory=list)
    drivers: list["TickDriver"] = field(default_factory=list)

    @property
    def bridge(self) -> str:
        return f"wsb{self.tag}"

    @property
    def address(self) -> str:
        return f"10.77.{self.subnet_octet}.1"

    @classmethod
    def create(cls, pg: "PgCluster", box: "Sandbox") -> "Network":
        taken = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True).stdout
        free = [n for n in range(1, 251) if f" 10.77.{n}." not in taken]  # another test run's bridge
        if not free:
            raise RuntimeError("no free 10.77.N.0/24 subnet for the hosts' bridge")
        net = cls(pg, secrets.token_hex(2), secrets.choice(free))
        try:
            ip("link", "add", net.bridge, "type", "bridge")
            ip("addr", "add", f"{net.address}/24", "dev", net.bridge)
            ip("link", "set", net.bridge, "up")
            net.url = pg.listen_also(net.address, f"10.77.{net.subnet_octet}.0/24")
            net.records = box.mkdir("records")
            net.daemon = box.write_helper("cluster_daemon.py")
            pg.psql("CREATE TABLE IF NOT EXISTS fence (name text PRIMARY KEY, token bigint NOT NULL);\n"
                    "CREATE TABLE IF NOT EXISTS fenced_writes (seq bigserial PRIMARY KEY, name text NOT NULL, "
                    "token bigint NOT NULL, host text NOT NULL, accepted boolean NOT NULL, "
                    "at timestamptz NOT NULL DEFAULT clock_timestamp());\n"
                    f'GRANT ALL ON fence, fenced_writes, fenced_writes_seq_seq TO "{pg.user}";\n', dbname=pg.dbname)
        except BaseException:
            net.close()
            raise
        return net

    def add_host(self, box: "Sandbox", name: str) -> Host:
        host = Host(self, box, name, len(self.hosts) + 1)
        self.hosts.append(host)
        ip("netns", "add", host.ns)
        ip("link", "add", host.veth, "type", "veth", "peer", "name", "eth0", "netns", host.ns)
        ip("link", "set", host.veth, "master", self.bridge, "up")
        ip("-n", host.ns, "addr", "add", f"10.77.{self.subnet_octet}.{10 + host.index}/24", "dev", "eth0")
        ip("-n", host.ns, "link", "set", "eth0", "up")
        ip("-n", host.ns, "link", "set", "lo", "up")
        host.home = box.mkdir(name, "state")
        host.locks = box.mkdir(name, "locks")
        host.logs = box.mkdir(name, "logs")
        return host

    def fence(self, name: str) -> None:
        self.pg.psql(f"INSERT INTO fence VALUES ('{name}', 0) ON CONFLICT DO NOTHING;\n", dbname=self.pg.dbname)

    def fenced_writes(self, name: str) -> list[tuple[int, str, bool]]:
        out = self.pg.psql(f"SELECT token, host, accepted FROM fenced_writes WHERE name = '{name}' ORDER BY seq;\n",
                           dbname=self.pg.dbname)
        rows = []
        for line in out.splitlines():
            token, host, accepted = line.split("|")
            rows.append((int(token), host, accepted == "t"))
        return rows

    def close(self) -> None:
        """Remove everything, also after a failure: the drivers, every process left in a host's
        namespace (by PID), the namespaces, veths, the server's extra address, the bridge."""
        for driver in self.drivers:
            driver.stop()
        for host in self.hosts:
            host.kill_all()
            subprocess.run(["ip", "netns", "del", host.ns], capture_output=True)
            subprocess.run(["ip", "link", "del", host.veth], capture_output=True)
        try:
            self.pg.listen_local_only()
        finally:
            subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)


def watcher_of(supervisor: int) -> int:
    """A cluster supervisor's watcher (its parent, watchdog_singleton.cluster.watcher); 0 if none."""
    try:
        with open(f"/proc/{supervisor}/stat", "rb") as f:
            parent = int(f.read().rsplit(b")", 1)[1].split()[1])
        with open(f"/proc/{parent}/cmdline", "rb") as f:
            return parent if b"watchdog_singleton.cluster.watcher" in f.read() else 0
    except (OSError, ValueError, IndexError):
        return 0


class TickDriver:
    """Cron for one host: runs its launcher for NAME every `every` seconds, in a thread."""

    def __init__(self, host: Host, name: str, every: float = 1.0, options: tuple[str, ...] = (),
                 daemon_args: tuple[str, ...] = ()) -> None:
        self.host, self.name, self.every, self.options = host, name, every, options
        self.daemon_args = daemon_args
        self.ticks: list[subprocess.CompletedProcess[str]] = []
        self._stop = threading.Event()
        self.paused = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        host.net.drivers.append(self)
        self.thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            if not self.paused.is_set():
                try:
                    self.ticks.append(self.host.launch(self.name, *self.options, daemon_args=self.daemon_args))
                except subprocess.TimeoutExpired:
                    pass
            self._stop.wait(max(0.0, self.every - (time.monotonic() - started)))

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(timeout=90)

    def problems(self) -> list[str]:
        """Ticks that printed a traceback or failed otherwise than with one line."""
        bad = []
        for tick in self.ticks:
            text = tick.stdout + tick.stderr
            if "Traceback" in text or len(tick.stderr.strip().splitlines()) > 1:
                bad.append(text)
        return bad


# -- reading what the daemons recorded -----------------------------------------------------------
BEAT = 0.1  # the recording daemon's beat: a SIGKILLed run ended at most this long after its last


@dataclass
class Run:
    host: str
    pid: int
    token: int
    start: float
    end: float  # its `end`, or its last beat + BEAT
    ended: bool  # it wrote `end` (SIGTERM), or it was killed


def runs(records: str, kind: str = ".run") -> list[Run]:
    """The daemons' runs (".run"), or their env-cleared grandchildren's (".kid")."""
    found = []
    for entry in sorted(os.listdir(records)):
        if not entry.endswith(kind):
            continue
        host, pid = entry[:-len(kind)].rsplit("-", 1)
        start = token = None
        last = None
        ended = False
        with open(os.path.join(records, entry)) as f:
            for line in f:
                parts = line.split()
                if len(parts) < 2:
                    continue  # a line cut by SIGKILL
                try:
                    when = float(parts[1])
                except ValueError:
                    continue
                if parts[0] == "start" and len(parts) == 3:
                    start, token, last = when, int(parts[2]), when
                elif parts[0] in ("beat", "nowrite"):
                    last = when
                elif parts[0] == "end":
                    last, ended = when, True
        if start is None or token is None or last is None:
            continue
        found.append(Run(host, int(pid), token, start, last if ended else last + BEAT, ended))
    return sorted(found, key=lambda run: run.start)


def overlaps(found: list[Run]) -> list[tuple[Run, Run]]:
    """Pairs of runs on different hosts whose intervals overlap."""
    bad = []
    for i, one in enumerate(found):
        for other in found[i + 1:]:
            if other.start >= one.end:
                continue
            if other.host != one.host:
                bad.append((one, other))
    return bad


def live_now(found: list[Run], now: float, slack: float = 0.5) -> list[Run]:
    return [run for run in found if not run.ended and run.end + slack >= now]


def kill_tree(host: Host, name: str) -> list[int]:
    return host.signal_tree(name, signal.SIGKILL)


def end_everything(net: Network, name: str) -> None:
    """At the end of a test: every host's supervisor gets SIGTERM (it releases the lease), then
    whatever is left of the daemons, SIGKILL."""
    for driver in net.drivers:
        driver.stop()
    for host in net.hosts:
        host.signal_tree(name, signal.SIGCONT)
        host.signal_tree(name, signal.SIGTERM)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(host.tree(name) for host in net.hosts):
        time.sleep(0.1)
    for host in net.hosts:
        kill_tree(host, name)


class CopySampler:
    """Every `every` seconds, in a thread: which hosts have a live process of NAME's recording
    daemon (the daemon, or a grandchild that cleared its environment), found by its command line
    in /proc and placed by its network namespace. Not by records or markers: a process counts
    from its exec to its death."""

    def __init__(self, net: Network, name: str, every: float = 0.05) -> None:
        self.net, self.name, self.every = net, name, every
        self.samples: list[tuple[float, frozenset[str]]] = []
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def hosts_now(self) -> frozenset[str]:
        daemon, name = self.net.daemon.encode(), self.name.encode()
        found: set[str] = set()
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    argv = f.read().split(b"\0")
                with open(f"/proc/{entry}/stat", "rb") as f:
                    state = f.read().rsplit(b")", 1)[1].split()[0]
            except (OSError, IndexError):
                continue
            # python DAEMON ...: the daemon or its grandchild, not a launcher that names them
            if argv[1:2] == [daemon] and name in argv and state not in (b"Z", b"X"):
                found.update(host.name for host in self.net.hosts if host.holds(int(entry)))
        return frozenset(found)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.monotonic(), self.hosts_now()))
            self._stop.wait(self.every)

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(timeout=10)

    def doubles(self) -> list[tuple[float, frozenset[str]]]:
        """The samples that saw copies on two hosts at once."""
        return [(when, hosts) for when, hosts in self.samples if len(hosts) > 1]
