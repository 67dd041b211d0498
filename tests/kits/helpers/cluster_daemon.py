"""A daemon for the cluster host tests (tests/e2e/test_cluster_hosts.py, tests/soak/cluster_soak.py).

    cluster_daemon.py RECORD_DIR URL NAME [--grandchild]

Appends to RECORD_DIR/HOST-PID.run, on the machine's one CLOCK_MONOTONIC (all "hosts" share
the machine): `start T TOKEN`, then `beat T` every 0.1 s, and `end T` on SIGTERM; a SIGKILLed
run ended at most 0.1 s after its last beat. Every 0.3 s it makes a write guarded by its
fencing token, the way the README shows: one statement that moves the fence forward only for
a token at least as new as the newest that wrote, and records whether the write was accepted.

With --grandchild it first leaves behind what escapes a marker-based tree search: a process
that double-forks, calls setsid and execs itself through `env -i` (no WATCHDOG_SINGLETON_LOCK),
which beats into RECORD_DIR/HOST-PID.kid the same way until it is killed.
"""

import os
import signal
import socket
import sys
import time

host = socket.gethostname()
if sys.argv[1] == "--kid":  # the grandchild: beats only, its environment empty
    record_dir, token_text = sys.argv[2:4]
    kid = open(os.path.join(record_dir, f"{host}-{os.getpid()}.kid"), "a", buffering=1)
    kid.write(f"start {time.monotonic():.6f} {token_text}\n")
    while True:
        kid.write(f"beat {time.monotonic():.6f}\n")
        time.sleep(0.1)

record_dir, url, name = sys.argv[1:4]
if sys.argv[4:5] == ["--grandchild"]:
    middle = os.fork()
    if middle == 0:
        os.setsid()
        if os.fork() == 0:
            os.execv("/usr/bin/env", ["env", "-i", sys.executable, os.path.abspath(__file__), "--kid", record_dir,
                                      os.environ["WATCHDOG_SINGLETON_FENCING_TOKEN"], name])
        os._exit(0)  # the grandchild is an orphan now: the supervisor (a subreaper) adopts it
    os.waitpid(middle, 0)
token = int(os.environ["WATCHDOG_SINGLETON_FENCING_TOKEN"])
path = os.path.join(record_dir, f"{host}-{os.getpid()}.run")
out = open(path, "a", buffering=1)
out.write(f"start {time.monotonic():.6f} {token}\n")


def on_term(signum: int, frame: object) -> None:
    out.write(f"end {time.monotonic():.6f}\n")
    out.close()
    os._exit(0)


signal.signal(signal.SIGTERM, on_term)

GUARDED = """
WITH f AS (UPDATE fence SET token = %(t)s WHERE name = %(n)s AND token <= %(t)s RETURNING 1)
INSERT INTO fenced_writes (name, token, host, accepted) VALUES (%(n)s, %(t)s, %(h)s, EXISTS (SELECT 1 FROM f))
"""

conn = None
next_write = 0.0
while True:
    now = time.monotonic()
    out.write(f"beat {now:.6f}\n")
    if now >= next_write:
        next_write = now + 0.3
        try:
            import psycopg

            if conn is None or conn.closed:
                conn = psycopg.connect(url, autocommit=True, connect_timeout=2,
                                       options="-c statement_timeout=2000")
            conn.execute(GUARDED, {"t": token, "n": name, "h": host})
        except Exception as exc:  # a partition, a database restart: the write is simply not made
            out.write(f"nowrite {time.monotonic():.6f} {exc.__class__.__name__}\n")
            conn = None
    time.sleep(0.1)
