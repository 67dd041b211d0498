#!/usr/bin/python3
"""Recording stand-ins for sbatch, squeue, scancel, scontrol, qsub, qstat, qdel, condor_submit, condor_q
and condor_rm (tests only).

Called through symlinks named after the tool. Every call appends its argv as one JSON line to
$FAKE_BATCH_DIR/calls.jsonl; the queue lives in $FAKE_BATCH_DIR/queue.json. Answers look like the
real tools' output that watchdog_singleton.batch reads. A job's state is what the test sets
(tests/e2e/test_batch.py: set_state); `scancel --batch --signal=TERM` and `scontrol requeue` only
record, as the real ones only signal the running job.
"""

import fcntl
import getpass
import json
import os
import re
import sys
from typing import Any, Callable

BASE = os.environ["FAKE_BATCH_DIR"]


def locked(body: Callable[[dict[str, Any]], Any]) -> Any:
    with open(os.path.join(BASE, "lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        path = os.path.join(BASE, "queue.json")
        queue = json.load(open(path)) if os.path.exists(path) else {"next": 100, "jobs": []}
        result = body(queue)
        with open(path + ".tmp", "w") as f:
            json.dump(queue, f)
        os.replace(path + ".tmp", path)
        return result


def directive(script: str, pattern: str) -> str:
    for line in open(script):
        found = re.match(pattern, line)
        if found:
            return found.group(1).strip()
    return ""


def main() -> None:
    tool = os.path.basename(sys.argv[0])
    args = sys.argv[1:]
    with open(os.path.join(BASE, "calls.jsonl"), "a") as f:
        f.write(json.dumps([tool] + args) + "\n")
    if tool == "qsub":
        script = args[-1]
        depend = args[args.index("-W") + 1] if "-W" in args else ""

        def add(queue: dict[str, Any]) -> str:
            queue["next"] += 1
            job_id = f"{queue['next']}.fakeserver"
            queue["jobs"].append({"id": job_id, "name": directive(script, r"#PBS -N (\S+)"),
                                  "state": "H" if depend else "Q", "owner": getpass.getuser(), "depend": depend})
            return job_id
        print(locked(add))
    elif tool == "qstat":
        for job in locked(lambda q: q["jobs"]):
            print(f"Job Id: {job['id']}\n    Job_Name = {job['name']}\n    Job_Owner = {job['owner']}@fakehost\n"
                  f"    job_state = {job['state']}\n    queue = workq\n")
    elif tool == "sbatch":
        script = args[-1]

        def add_slurm(queue: dict[str, Any]) -> str:
            queue["next"] += 1
            job_id = str(queue["next"])
            queue["jobs"].append({"id": job_id, "name": directive(script, r"#SBATCH --job-name=(\S+)"),
                                  "state": "PENDING", "reason": "Priority", "owner": getpass.getuser()})
            return job_id
        print(locked(add_slurm))
    elif tool == "squeue":
        wanted = args[args.index("-n") + 1]
        for job in locked(lambda q: q["jobs"]):
            if job["name"] == wanted:
                print(job["id"], job["state"], job.get("reason") or "None")
    elif tool == "scancel" and "--batch" in args or tool == "scontrol":
        pass
    elif tool in ("qdel", "condor_rm", "scancel"):
        locked(lambda q: q.__setitem__("jobs", [j for j in q["jobs"] if j["id"] not in args]))
    elif tool == "condor_submit":
        script = args[-1]

        def add(queue: dict[str, Any]) -> str:
            queue["next"] += 1
            job_id = f"{queue['next']}.0"
            queue["jobs"].append({"id": job_id, "name": directive(script, r"batch_name\s*=\s*(\S+)"), "state": "1"})
            return job_id
        job_id = locked(add)
        print(f"{job_id} - {job_id}")
    elif tool == "condor_q":
        found = re.search(r'JobBatchName == "([^"]+)"', args[args.index("-constraint") + 1])
        wanted = found.group(1) if found else ""
        for job in locked(lambda q: q["jobs"]):
            if job["name"] == wanted:
                cluster, proc = job["id"].split(".")
                print(cluster, proc, job["state"])
    else:
        sys.exit(f"fakebatch: unknown tool {tool}")


if __name__ == "__main__":
    main()
