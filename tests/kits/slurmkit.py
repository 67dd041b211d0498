"""A real single-node Slurm for the tests: the `slurm_cluster` fixture and small helpers.

tests/kits/slurm/start.sh (run as root) installs Debian's slurm-wlm and munge when missing, writes
/etc/slurm/slurm.conf for this host and starts munged, slurmctld and slurmd, and never touches a
Slurm it did not start; tests/run.sh runs it before pytest and tests/kits/slurm/stop.sh after. The
fixture runs start.sh again (quick when Slurm already runs), and at the end of the session
cancels every job of the users that submitted through `sbatch_as` (and of the default test user),
so nothing stays queued. Measured facts about this
cluster (signal timing, requeue delay) are in tests/kits/slurm/README.md.

Tests use it as:

    pytestmark = pytest.mark.slurm

    def test_x(slurm_cluster: SlurmCluster, test_user: UnprivilegedUser) -> None:
        jobid = sbatch_as(test_user, script, args=["-J", name])
        wait_job_state(jobid, {"RUNNING"}, 30)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from typing import Iterator, Optional

import pytest
from testuser import TEST_USER
from userkit import UnprivilegedUser

HERE = os.path.dirname(os.path.abspath(__file__))
START_SH = os.path.join(HERE, "slurm", "start.sh")
SLURM_PATH = "/usr/bin:/bin:/usr/sbin:/sbin"
# Job states while a job still holds or waits for the node (squeue's default listing).
ACTIVE_STATES = frozenset({"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED",
                           "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING", "SIGNALING", "STAGE_OUT"})

_submitters: set[str] = set()  # users that submitted through sbatch_as: their jobs are cancelled at the end
_job_dirs: list[str] = []


@dataclass
class SlurmCluster:
    node: str
    partition: str
    ready_line: str


def _slurm(argv: list[str], timeout: float = 30,
           user: Optional[UnprivilegedUser] = None, env: Optional[dict[str, str]] = None,
           cwd: Optional[str] = None) -> subprocess.CompletedProcess[str]:
    kwargs = user.popen_kwargs() if user is not None else {}
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                          env=env if env is not None else {"PATH": SLURM_PATH}, cwd=cwd, **kwargs)


def job_state(jobid: str) -> Optional[str]:
    """The job's state (PENDING, RUNNING, COMPLETED, TIMEOUT, ...), or None once slurmctld has purged
    it (MinJobAge after it ended)."""
    out = _slurm(["scontrol", "-o", "show", "job", jobid])
    if out.returncode != 0:
        return None
    for field in out.stdout.split():
        if field.startswith("JobState="):
            return field.split("=", 1)[1]
    return None


def job_field(jobid: str, name: str) -> Optional[str]:
    """One field of `scontrol show job` (e.g. "Restarts", "Reason", "StdOut"), or None."""
    out = _slurm(["scontrol", "-o", "show", "job", jobid])
    for field in out.stdout.split():
        if field.startswith(name + "="):
            return field.split("=", 1)[1]
    return None


def squeue_states(user: str, name: Optional[str] = None) -> list[tuple[str, str]]:
    """(jobid, state) of the user's jobs still in the queue (pending, running, completing...),
    only those named `name` when given; oldest first."""
    argv = ["squeue", "-h", "-u", user, "-o", "%i %T", "--sort=i"]
    if name is not None:
        argv += ["-n", name]
    out = _slurm(argv)
    if out.returncode != 0:
        pytest.fail(f"squeue failed: {out.stderr.strip()}")
    return [(parts[0], parts[1]) for parts in (line.split() for line in out.stdout.splitlines()) if len(parts) == 2]


def wait_job_state(jobid: str, states: set[str] | frozenset[str], timeout: float, interval: float = 0.2) -> str:
    """Wait until the job is in one of `states`; its state. Fails the test at the deadline, or as
    soon as the job ended in a state not asked for (COMPLETED when RUNNING was wanted is a failure
    of the test, not something to wait out)."""
    deadline = time.monotonic() + timeout
    seen: Optional[str] = None
    while True:
        seen = job_state(jobid)
        if seen is None:
            pytest.fail(f"job {jobid} left the queue before reaching {sorted(states)}")
        if seen in states:
            return seen
        if seen not in ACTIVE_STATES:
            pytest.fail(f"job {jobid} ended {seen}, waiting for {sorted(states)}")
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for job {jobid} to be {sorted(states)}; "
                        f"it is {seen} ({job_field(jobid, 'Reason')})")
        time.sleep(interval)


def sbatch_as(user: UnprivilegedUser, script_path: str, env: Optional[dict[str, str]] = None,
              args: Optional[list[str]] = None, cwd: Optional[str] = None) -> str:
    """Submit `script_path` as `user` (sbatch --parsable ARGS SCRIPT); the job id. The job gets a
    small clean environment (PATH, HOME, USER, LOGNAME) plus `env`; it runs in `cwd` (default: the
    script's folder). Fails the test when sbatch refuses."""
    _submitters.add(user.name)
    full_env = {"PATH": SLURM_PATH, "HOME": user.home, "USER": user.name, "LOGNAME": user.name}
    full_env.update(env or {})
    out = _slurm(["sbatch", "--parsable", *(args or []), script_path], user=user, env=full_env,
                 cwd=cwd or os.path.dirname(os.path.abspath(script_path)))
    if out.returncode != 0:
        pytest.fail(f"sbatch {script_path} as {user.name} failed: {out.stderr.strip()}")
    return out.stdout.strip().split(";")[0]


def job_dir(user: UnprivilegedUser, label: str) -> str:
    """A fresh folder owned by `user` for job scripts and outputs (removed at the end of the session)."""
    path = tempfile.mkdtemp(prefix=f"ws-slurm-{label}-")
    os.chown(path, user.uid, user.gid)
    os.chmod(path, 0o755)
    _job_dirs.append(path)
    return path


def write_script(user: UnprivilegedUser, path: str, text: str) -> str:
    """Write an executable job script owned by `user`; its path."""
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, 0o755)
    os.chown(path, user.uid, user.gid)
    return path


def cancel_all(users: set[str], timeout: float = 30) -> list[str]:
    """scancel -u every user, then wait until none of their jobs is in the queue; what is left."""
    for name in sorted(users):
        _slurm(["scancel", "-u", name])
    deadline = time.monotonic() + timeout
    while True:
        left = [f"{jobid} {state} ({name})" for name in sorted(users) for jobid, state in squeue_states(name)]
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.2)


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    """A running single-node Slurm (tests/kits/slurm/start.sh). Skips when not root, and when a Slurm
    that start.sh did not start runs or is configured here (start.sh exits 3 and leaves it alone:
    the skip line says what it found); fails when Slurm cannot start (the real Slurm is a required
    part of the suite). At the end: every job of the
    users that submitted is cancelled, and the session waits until the queue holds none of them."""
    if os.getuid() != 0:
        pytest.skip("real Slurm tests need root: tests/run.sh as root starts Slurm (tests/kits/slurm/start.sh)")
    try:
        out = subprocess.run(["bash", START_SH], capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired:
        pytest.fail("tests/kits/slurm/start.sh did not finish in 600 s")
    lines = (out.stderr.strip() or out.stdout.strip() or "no output").splitlines()
    if out.returncode == 3:
        # A Slurm someone else runs or configured on this machine: start.sh left it alone, and the
        # tests do not submit to a cluster whose settings they do not know.
        pytest.skip(lines[-1])
    if out.returncode != 0:
        pytest.fail(f"Slurm cannot start: {lines[-1]}")
    node = _slurm(["hostname", "-s"]).stdout.strip()
    cluster = SlurmCluster(node=node, partition="debug", ready_line=out.stdout.strip())
    _submitters.add(TEST_USER)
    try:
        yield cluster
    finally:
        left = cancel_all(set(_submitters))
        for path in _job_dirs:
            shutil.rmtree(path, ignore_errors=True)
        if left:
            pytest.fail(f"jobs still queued after scancel: {', '.join(left)}")
