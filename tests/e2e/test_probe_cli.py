"""What a first real user meets at the command line, found by trying it: control bytes in a
command never reach the terminal raw from install's confirmation either."""

from __future__ import annotations

import os
import sys

from conftest import Sandbox


def test_install_confirmation_escapes_control_bytes_as_status_does(sandbox: Sandbox) -> None:
    name = sandbox.job("ctl")
    proc = sandbox.ok("install", name, "--no-start", "--", "/bin/sleep", "\x1b[31mRED\x07", "a\tb", "")
    line = proc.stdout.splitlines()[0]
    assert not any(ord(c) < 0x20 or ord(c) == 0x7F for c in line), repr(line)
    assert line.endswith("/bin/sleep $'\\x1b[31mRED\\x07' $'a\\tb' ''"), repr(line)
    status = sandbox.ws("status", name).stdout
    assert "/bin/sleep $'\\x1b[31mRED\\x07' $'a\\tb' ''" in status


def test_the_psycopg_hint_names_pipx_inject_to_a_pipx_user(sandbox: Sandbox) -> None:
    """pipx keeps the tool in a venv of its own (with pipx_metadata.json in it): `pip install`
    there is not what its user types."""
    venv = sandbox.mkdir("pipx", "venvs", "watchdog-singleton")
    with open(os.path.join(venv, "pipx_metadata.json"), "w") as f:
        f.write("{}\n")
    name = sandbox.job("pipx")
    script = (f"import sys; sys.modules['psycopg'] = None; sys.prefix = {venv!r}; "
              "from watchdog_singleton.__main__ import main; main(sys.argv[1:])")
    proc = sandbox.run_as([sys.executable, "-c", script, "install", name, "--no-start",
                           "--cluster", "postgresql://me@db.invalid/ws", "--", "/bin/sleep", "30"])
    assert (proc.returncode, proc.stderr) == (
        2, "watchdog-singleton: cluster jobs need psycopg 3: pipx inject watchdog-singleton 'psycopg[binary]'\n")
    proc = sandbox.run_as([sys.executable, "-c", script, "lease", "check", name, "--token", "1",
                           "--cluster", "postgresql://me@db.invalid/ws"])
    assert proc.returncode == 2 and "pipx inject watchdog-singleton 'psycopg[binary]'" in proc.stderr, proc.stderr
    tasks = sandbox.path("tasks.txt")
    with open(tasks, "w") as f:
        f.write("true\n")
    os.chown(tasks, sandbox.user.uid, sandbox.user.gid)
    proc = sandbox.run_as([sys.executable, "-c", script, "farm", tasks, "--db", "postgresql://me@db.invalid/ws"])
    assert proc.returncode == 2 and "pipx inject watchdog-singleton 'psycopg[binary]'" in proc.stderr, proc.stderr
