"""The least any log relay can do: copy stdin (a pipe) to FILE, 256 KiB at a time, nothing else.

Usage: producer | pipe_relay.py FILE

Figure 4 runs it beside our supervisor: its rate is what a pipe between a daemon and its log
costs before any logic of ours (rotation, markers, a writer thread) is added.
"""

import fcntl
import os
import sys

PIPE_SIZE = 1024 * 1024  # as large as our supervisor's pipe


def main() -> None:
    fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        fcntl.fcntl(0, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
    except OSError:
        pass
    while True:
        data = os.read(0, 256 * 1024)
        if not data:
            return
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]


if __name__ == "__main__":
    main()
