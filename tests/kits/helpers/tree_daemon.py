"""A daemon with a hard-to-kill tree, for tests: a child, a double-forked setsid grandchild,
and a child that ignores SIGTERM. Writes the pids of all of them to argv[1] when ready."""

import os
import signal
import sys
import time

out = sys.argv[1]
pids = [os.getpid()]

child = os.fork()
if child == 0:
    while True:
        time.sleep(1)
pids.append(child)

r, w = os.pipe()
first = os.fork()
if first == 0:
    os.setsid()
    second = os.fork()
    if second == 0:
        os.close(r)
        os.write(w, f"{os.getpid()}\n".encode())
        os.close(w)
        while True:
            time.sleep(1)
    os._exit(0)  # the grandchild is orphaned: without a subreaper it escapes to init
os.close(w)
os.waitpid(first, 0)
pids.append(int(os.read(r, 64).decode()))

stubborn = os.fork()
if stubborn == 0:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    while True:
        time.sleep(1)
pids.append(stubborn)

with open(out + ".tmp", "w") as f:
    f.write(" ".join(map(str, pids)) + "\n")
os.rename(out + ".tmp", out)
print("tree ready", pids, flush=True)
while True:
    time.sleep(1)
