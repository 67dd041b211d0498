"""A daemon that writes as fast as it can: TOTAL bytes to stdout in lines of CHUNK bytes.

Usage: log_writer.py RESULT TOTAL CHUNK [--then-sleep]

It times its own writes, from the first write() to the return of the last, and records that,
the longest single write() and when it finished in RESULT (JSON): what is measured is how long
the daemon itself spent writing, not its start-up, nor whoever drains its output afterwards.
"""

import json
import os
import sys
import time


def main() -> None:
    result, total, chunk = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    line = memoryview(b"x" * (chunk - 1) + b"\n")
    written, worst = 0, 0.0
    start = time.perf_counter()
    while written < total:
        before = time.perf_counter()
        done = 0
        while done < chunk:
            done += os.write(1, line[done:])
        worst = max(worst, time.perf_counter() - before)
        written += chunk
    elapsed = time.perf_counter() - start
    with open(result + ".tmp", "w") as f:
        json.dump({"elapsed": elapsed, "worst_write": worst, "bytes": written, "end": time.time()}, f)
    os.rename(result + ".tmp", result)  # the reader never sees half a result
    if "--then-sleep" in sys.argv[4:]:
        while True:
            time.sleep(3600)


if __name__ == "__main__":
    main()
