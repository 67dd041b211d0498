"""A daemon for tests: prints numbered lines to stdout (size and pace from argv), bumps a
heartbeat file after each line, and on SIGTERM records it in argv[1] + '.term' and exits.

usage: chatty_daemon.py HEARTBEAT_FILE LINE_BYTES INTERVAL_SECONDS [COUNT]
"""

import os
import signal
import sys
import time
from types import FrameType
from typing import Optional

heartbeat, size, interval = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
count = int(sys.argv[4]) if len(sys.argv) > 4 else None


def on_term(signum: int, frame: Optional[FrameType]) -> None:
    with open(heartbeat + ".term", "w") as f:
        f.write("TERM\n")
    sys.exit(0)


signal.signal(signal.SIGTERM, on_term)
i = 0
while count is None or i < count:
    body = f"line {i} "
    width = size if size > 0 else (i * 37) % 300 + len(body) + 1  # 0: lines of many lengths
    sys.stdout.write(body + "x" * max(0, width - len(body) - 1) + "\n")
    sys.stdout.flush()
    i += 1
    with open(heartbeat + ".tmp", "w") as f:
        f.write(str(i))
    os.replace(heartbeat + ".tmp", heartbeat)
    if interval:
        time.sleep(interval)
while True:
    time.sleep(1)
