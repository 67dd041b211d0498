"""The real single-node Slurm the batch tests rely on: a job submitted as the test user runs and
completes, the `B:` warning signal reaches the batch shell before the time limit, and the owner can
requeue a running job. These pin the facts in tests/kits/slurm/README.md. And tests/kits/slurm/start.sh
itself: it leaves a Slurm it did not start alone, and proves its process tracking with a job step."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess

import pytest
from conftest import UnprivilegedUser
from slurmkit import (
    SLURM_PATH,
    START_SH,
    SlurmCluster,
    job_dir,
    job_field,
    sbatch_as,
    squeue_states,
    wait_job_state,
    write_script,
)

pytestmark = pytest.mark.slurm


def read(path: str) -> str:
    with open(path) as f:
        return f.read()


def test_a_short_job_of_the_test_user_runs_and_completes(slurm_cluster: SlurmCluster,
                                                         test_user: UnprivilegedUser) -> None:
    folder = job_dir(test_user, "five")
    script = write_script(test_user, os.path.join(folder, "five.sh"),
                          "#!/bin/sh\necho start $(id -un)\nsleep 5\necho done\n")
    out = os.path.join(folder, "five.out")
    jobid = sbatch_as(test_user, script, args=["-J", "ws-smoke-five", "-o", out])
    [(queued, state)] = squeue_states(test_user.name, "ws-smoke-five")
    assert queued == jobid and state in ("PENDING", "CONFIGURING", "RUNNING")
    wait_job_state(jobid, {"COMPLETED"}, 60)
    assert read(out) == f"start {test_user.name}\ndone\n"
    assert squeue_states(test_user.name, "ws-smoke-five") == []


def test_the_batch_shell_gets_usr1_before_the_time_limit(slurm_cluster: SlurmCluster,
                                                         test_user: UnprivilegedUser) -> None:
    # slurmctld sends the warning on its 30-second time-limit tick, as soon as no more than
    # lead + 30 s remain: with --time=1 and @45 it arrives 0-30 s after the start.
    folder = job_dir(test_user, "usr1")
    script = write_script(test_user, os.path.join(folder, "usr1.sh"), """#!/bin/bash
start=$SECONDS
trap 'echo "USR1 after $((SECONDS - start)) s"; exit 0' USR1
sleep 300 & wait $!
echo "no USR1 after $((SECONDS - start)) s"
""")
    out = os.path.join(folder, "usr1.out")
    jobid = sbatch_as(test_user, script, args=["-J", "ws-smoke-usr1", "-o", out,
                                               "--signal=B:USR1@45", "--time=1"])
    wait_job_state(jobid, {"COMPLETED"}, 90)  # TIMEOUT (killed at 60 s) when the signal never came
    # (slurmstepd may add a line about the SIGCONT it sends after the signal to a shell that has gone)
    match = re.search(r"^USR1 after (\d+) s$", read(out), re.M)
    assert match, read(out)
    assert int(match.group(1)) < 45


def test_the_owner_requeues_a_running_job_and_it_runs_again(slurm_cluster: SlurmCluster,
                                                            test_user: UnprivilegedUser) -> None:
    folder = job_dir(test_user, "requeue")
    script = write_script(test_user, os.path.join(folder, "requeue.sh"), """#!/bin/bash
echo "run ${SLURM_RESTART_COUNT:-0}"
if [ "${SLURM_RESTART_COUNT:-0}" = 0 ]; then
  scontrol requeue "$SLURM_JOB_ID"
  sleep 60
fi
""")
    out = os.path.join(folder, "requeue.out")
    jobid = sbatch_as(test_user, script, args=["-J", "ws-smoke-requeue", "-o", out,
                                               "--requeue", "--open-mode=append"])
    # The second run may start cred_expire + 1 s after the requeue (start.sh sets 10 s; Slurm's default 120).
    wait_job_state(jobid, {"COMPLETED"}, 60)
    assert job_field(jobid, "Restarts") == "1"
    runs = [line for line in read(out).splitlines() if line.startswith("run ")]
    assert runs == ["run 0", "run 1"], read(out)


ISOLATED_SH = os.path.join(os.path.dirname(START_SH), "isolated.sh")
RUNDIR = "/run/watchdog-singleton-slurm"


def digest(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def daemons() -> list[str]:
    """The pids start.sh recorded for slurmctld and slurmd."""
    return [open(os.path.join(RUNDIR, f"{d}.pid")).read().strip() for d in ("slurmctld", "slurmd")]


@pytest.mark.parametrize("disguise,problem", [
    # start.sh's own records hidden: the running daemons are someone else's.
    ("mount -t tmpfs tmpfs " + RUNDIR, "slurmctld (pid"),
    # a slurm.conf start.sh did not write.
    # (written in a tmpfs of the namespace's own, so nothing is left behind)
    ("mount -t tmpfs tmpfs /mnt && printf 'ClusterName=theirs\\n' >/mnt/theirs.conf && "
     "mount --bind /mnt/theirs.conf /etc/slurm/slurm.conf",
     "/etc/slurm/slurm.conf was not written by this script"),
])
def test_start_sh_leaves_a_slurm_it_did_not_start_alone(slurm_cluster: SlurmCluster, disguise: str,
                                                        problem: str) -> None:
    """In a mount namespace where the running Slurm looks like someone else's, start.sh exits 3 with
    one line and changes nothing: not the config, not the daemons."""
    before = (digest("/etc/slurm/slurm.conf"), daemons())
    proc = subprocess.run(["unshare", "--mount", "--propagation", "private", "bash", "-c",
                           f"{disguise} && exec bash {START_SH}"], capture_output=True, text=True, timeout=60,
                          env={"PATH": SLURM_PATH})
    assert proc.returncode == 3, (proc.stdout, proc.stderr)
    assert proc.stderr.startswith("slurm: left alone: ") and problem in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and proc.stdout == ""
    assert (digest("/etc/slurm/slurm.conf"), daemons()) == before
    # Still running: "completing" too, an earlier test's job may still be ending.
    assert subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True,
                          env={"PATH": SLURM_PATH}).stdout.strip() in ("idle", "mixed", "allocated", "completing")


def test_start_sh_proves_its_process_tracking_with_a_job_step_and_falls_back_to_linuxproc() -> None:
    """About 30 s. A machine of its own (tests/kits/slurm/isolated.sh): the cgroup v1 freezer is mounted
    but unusable (a tmpfs), as where proctrack/cgroup made every job step fail and drained the node.
    start.sh tries proctrack/cgroup, sees it fail, and says ready only with linuxproc proven by srun."""
    if os.getuid() != 0:
        pytest.skip("start.sh needs root")
    if not os.path.isdir("/sys/fs/cgroup/freezer"):
        pytest.skip("no cgroup v1 freezer here: start.sh never tries proctrack/cgroup")
    proc = subprocess.run(["bash", ISOLATED_SH, "bash", START_SH], capture_output=True, text=True, timeout=300,
                          env={"PATH": SLURM_PATH})
    if proc.returncode == 2 and proc.stderr.startswith("isolated.sh:"):
        pytest.skip(proc.stderr.strip())
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    assert "proctrack/cgroup failed" in proc.stderr and "falling back to proctrack/linuxproc" in proc.stderr
    assert "proctrack/linuxproc (proven by a job step)" in proc.stdout, proc.stdout
