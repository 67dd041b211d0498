"""A daemon for tests: records its argv, cwd and environment as JSON in $ARGV_OUT, prints a line
to stdout and one to stderr, then sleeps. With $EXIT_AFTER it exits with code 3 after that many
seconds instead."""

import json
import os
import sys
import time

record = {"argv": sys.argv[1:], "cwd": os.getcwd(), "env": dict(os.environ), "pid": os.getpid()}
out = os.environ.get("ARGV_OUT")
if out:
    with open(out + f".{os.getpid()}.tmp", "w") as f:
        json.dump(record, f)
    os.replace(out + f".{os.getpid()}.tmp", out)
print(f"stdout line from {os.getpid()}", flush=True)
print(f"stderr line from {os.getpid()}", file=sys.stderr, flush=True)
exit_after = os.environ.get("EXIT_AFTER")
if exit_after:
    time.sleep(float(exit_after))
    sys.exit(3)
while True:
    time.sleep(1)
