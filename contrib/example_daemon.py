#!/usr/bin/env python3
"""An example daemon: a heartbeat line on stdout every few seconds, a note on stderr at start
and at exit. Stops cleanly on SIGTERM, as a daemon under watchdog-singleton should."""

import os
import signal
import sys
import time

running = True


def stop(signum: int, frame: object) -> None:
    global running
    running = False


signal.signal(signal.SIGTERM, stop)
interval = float(sys.argv[1]) if len(sys.argv) > 1 else 5.0
print(f"example daemon {os.getpid()} starting in {os.getcwd()}", file=sys.stderr, flush=True)
beat = 0
while running:
    print(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} heartbeat {beat}", flush=True)
    beat += 1
    time.sleep(interval)
print(f"example daemon {os.getpid()} got SIGTERM, exiting", file=sys.stderr, flush=True)
