"""A daemon for tests: writes argv[1] chunks of 64 KiB lines to stdout as fast as it can, then
records its longest single write() and its total time in argv[2], then sleeps (so that its
supervisor stays up while a test reads the log)."""

import os
import sys
import time

chunk = b"x" * 65535 + b"\n"
worst = 0.0
began = time.monotonic()
for _ in range(int(sys.argv[1])):
    t = time.monotonic()
    os.write(1, chunk)
    worst = max(worst, time.monotonic() - t)
with open(sys.argv[2], "w") as f:
    f.write(f"{worst} {time.monotonic() - began}")
time.sleep(60)
