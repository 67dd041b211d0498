"""A daemon that checkpoints on SIGTERM and resumes from its checkpoint (batch tests).

It reads $WATCHDOG_SINGLETON_STATE_DIR/checkpoint (the number of runs so far), prints
`start run=N resumed_from=M`, and on SIGTERM writes N to the checkpoint and prints `checkpointed N`.
"""

import os
import signal
import sys
import time
from types import FrameType
from typing import Optional

folder = os.environ["WATCHDOG_SINGLETON_STATE_DIR"]
path = os.path.join(folder, "checkpoint")
done = int(open(path).read()) if os.path.exists(path) else 0
run = done + 1
print(f"start run={run} resumed_from={done} batch={os.environ.get('SLURM_JOB_ID') or os.environ.get('PBS_JOBID')}",
      flush=True)


def on_term(signum: int, frame: Optional[FrameType]) -> None:
    with open(path + ".tmp", "w") as f:
        f.write(str(run))
    os.replace(path + ".tmp", path)
    print(f"checkpointed {run}", flush=True)
    sys.exit(0)


signal.signal(signal.SIGTERM, on_term)
while True:
    time.sleep(1)
