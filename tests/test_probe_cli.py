"""What a first real user meets at the command line, found by trying it: control bytes in a
command never reach the terminal raw from install's confirmation either."""

from __future__ import annotations

from conftest import Sandbox


def test_install_confirmation_escapes_control_bytes_as_status_does(sandbox: Sandbox) -> None:
    name = sandbox.job("ctl")
    proc = sandbox.ok("install", name, "--no-start", "--", "/bin/sleep", "\x1b[31mRED\x07", "a\tb", "")
    line = proc.stdout.splitlines()[0]
    assert not any(ord(c) < 0x20 or ord(c) == 0x7F for c in line), repr(line)
    assert line.endswith("/bin/sleep $'\\x1b[31mRED\\x07' $'a\\tb' ''"), repr(line)
    status = sandbox.ws("status", name).stdout
    assert "/bin/sleep $'\\x1b[31mRED\\x07' $'a\\tb' ''" in status
