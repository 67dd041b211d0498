"""The farm's watcher: a tiny process that outlives a SIGKILLed farm just long enough to kill
its tasks' trees, so a task handed to another farm after its lease can never run twice at once.
A farm that ends on its own stops its tasks' leftovers itself and says so (ALL_CLEAR) before the
EOF: the watcher then exits without scanning again, and the farm does not wait for a scan.

The farm starts it with the read end of a pipe as stdin and keeps the write end (close-on-exec,
so no task holds it). When the farm dies, however it dies, the kernel closes the write end;
the watcher reads EOF and stops every process whose environment carries the farm's marker
(tree.Stopper: SIGTERM, grace, SIGKILL, rescanning until nothing is left). Standard library
only: it costs one small interpreter per farm, not one per task.
"""

from __future__ import annotations

import os
import signal
import sys

from ..proc.stop import stop_job

ALL_CLEAR = b"."  # written by a farm that stopped every marked process itself


def main(argv: list[str]) -> int:
    prefix, grace = argv[0], float(argv[1])
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(sig, signal.SIG_IGN)  # the farm handles these; we wait for it to be gone
    clear = False
    while True:
        try:
            data = os.read(0, 4096)
        except InterruptedError:
            continue
        except OSError:
            break
        if not data:
            break
        clear = clear or ALL_CLEAR in data
    if not clear:
        stop_job(prefix, grace, prefix=True)  # every process of the farm's tasks, by its marker
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
