"""submit: keeping a daemon alive through Slurm, PBS and HTCondor.

Rendered scripts are checked with bash -n and a submit-file parser; PBS and HTCondor run against
recording stand-ins of their tools (tests/kits/helpers/fakebatch); Slurm against the real single-node
cluster of tests/kits/slurmkit.py (marked slurm; the requeue test also slow).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from typing import Any

import pytest
from conftest import HELPERS, Sandbox, wait_for

from watchdog_singleton.batch import Spec, parse_walltime, schedulers
from watchdog_singleton.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONTRIB = os.path.join(REPO, "contrib", "batch")


def spec(**kw: Any) -> Spec:
    base: dict[str, Any] = dict(name="web", command=["/usr/bin/sleep", "1000"], workdir="/srv/web",
                                root="/home/u/.local/state/watchdog-singleton/h1", runner=["/venv/bin/python", "-I",
                                                                                           "-m", "watchdog_singleton"],
                                walltime=3600, signal_lead=120, grace=15.0, account="acct", queue="long",
                                extra=["--mem=1G"])
    base.update(kw)
    return Spec(**base)


def bash_n(text: str, tmp_path: Any) -> None:
    path = tmp_path / "script.sh"
    path.write_text(text)
    proc = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def submit_keys(text: str) -> dict[str, str]:
    """An HTCondor submit file's `key = value` lines (comments and `queue` aside)."""
    keys = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip() or line.startswith("queue"):
            continue
        key, sep, value = line.partition("=")
        assert sep, f"not a key = value line: {line!r}"
        keys[key.strip().lower()] = value.strip()
    return keys


# ---- rendering -----------------------------------------------------------------------------------

def test_slurm_script_requeues_itself_on_usr1_to_the_batch_shell_with_appended_output(tmp_path: Any) -> None:
    text = schedulers.get("slurm").render(spec())["job.sbatch"]
    bash_n(text, tmp_path)
    directives = [line[len("#SBATCH "):] for line in text.splitlines() if line.startswith("#SBATCH ")]
    for wanted in ("--job-name=ws-web", "--dependency=singleton", "--signal=B:USR1@120", "--requeue",
                   "--open-mode=append", "--time=0-01:00:00", "--account=acct", "--partition=long", "--mem=1G",
                   "--output=/home/u/.local/state/watchdog-singleton/h1/logs/web.stderr.log"):
        assert wanted in directives, (wanted, directives)
    assert "trap 'ws_say" in text and "ws_term requeue' USR1" in text
    assert 'scontrol requeue "$SLURM_JOB_ID"' in text
    # The supervisor runs in the background and is waited on again after a trap.
    assert "watchdog_singleton run " in text and "--restart always web -- /usr/bin/sleep 1000 &" in text
    assert 'kill -0 "$ws_pid" 2>/dev/null || break' in text


@pytest.mark.parametrize("scheduler", ["slurm", "pbs", "htcondor"])
def test_every_script_runs_the_supervisor_with_node_local_lock_shared_state_and_job_logs(scheduler: str,
                                                                                         tmp_path: Any) -> None:
    s = spec()
    rendered = schedulers.get(scheduler).render(s)
    shell = [t for name, t in rendered.items() if name.endswith((".sh", ".sbatch"))]
    assert len(shell) == 1
    bash_n(shell[0], tmp_path)
    line = next(x for x in shell[0].splitlines() if "watchdog_singleton run" in x)
    assert line.startswith("/venv/bin/python -I -m watchdog_singleton run ")
    assert '--lock-dir "/tmp/watchdog-singleton-$(id -u)"' in line
    assert f"--state-dir {s.root} " in line  # WATCHDOG_SINGLETON_STATE_DIR: job-state/web for every job
    assert f"--log-dir {s.root}/logs " in line and "--grace 15 " in line and "--workdir /srv/web " in line
    assert f"ws_stop={s.root.rsplit('/', 1)[0]}/job-state/web/.batch/stop" in shell[0]


def test_pbs_script_submits_its_successor_at_the_start_with_afterany_and_times_the_warning(tmp_path: Any) -> None:
    text = schedulers.get("pbs").render(spec())["job.pbs.sh"]
    bash_n(text, tmp_path)
    assert "#PBS -N ws-web\n" in text and "#PBS -l walltime=01:00:00\n" in text and "#PBS -A acct\n" in text
    successor = text.index('qsub -W depend=afterany:"$PBS_JOBID"')
    assert successor < text.index("watchdog_singleton run")  # at the start, not the end
    assert "afterok" not in text
    assert "ws_end=$(( $(date +%s) + 3480 ))" in text  # walltime 3600 - lead 120


def test_htcondor_submit_file_is_removed_only_when_asked_and_retries_explicitly(tmp_path: Any) -> None:
    rendered = schedulers.get("htcondor").render(spec())
    keys = submit_keys(rendered["job.sub"])
    assert keys["on_exit_remove"] == "(ExitBySignal == False) && (ExitCode != 75)"
    assert int(keys["max_retries"]) >= 1000
    assert keys["batch_name"] == "ws-web" and keys["kill_sig"] == "SIGTERM"
    assert int(keys["job_max_vacate_time"]) > 15  # more than --grace
    assert "$(Cluster).$(Process)" in keys["log"] and "$(Cluster).$(Process)" in keys["environment"]
    assert keys["executable"].endswith("/job-state/web/.batch/job-wrapper.sh")
    wrapper = rendered["job-wrapper.sh"]
    bash_n(wrapper, tmp_path)
    assert wrapper.rstrip().endswith("exit 75")


def test_contrib_templates_are_what_submit_renders() -> None:
    for filename, text in schedulers.templates().items():
        with open(os.path.join(CONTRIB, filename)) as f:
            assert f.read() == text, f"contrib/batch/{filename} drifted: run python3 contrib/batch/generate.py"


@pytest.mark.parametrize("text,seconds", [("24:00:00", 86400), ("1-02:00:00", 93600), ("90", 5400),
                                          ("00:00:30", 30), ("48:00:00", 172800)])
def test_walltime_formats(text: str, seconds: int) -> None:
    assert parse_walltime(text) == seconds


@pytest.mark.parametrize("text", ["24h", "1:2", "00:00:00", "", "-1", "1:60:00"])
def test_bad_walltime_is_refused(text: str) -> None:
    with pytest.raises(UserError):
        parse_walltime(text)


# ---- the CLI with recording stand-ins of the PBS and HTCondor tools ------------------------------

def fake_tools(box: Sandbox) -> tuple[str, str]:
    """Copy the stand-ins where the test user can run them; (their folder, their state folder)."""
    bin_dir = box.path("fakebin")
    shutil.copytree(os.path.join(HELPERS, "fakebatch"), bin_dir, symlinks=True)
    state = box.mkdir("fakestate")
    for path in (bin_dir, *[os.path.join(bin_dir, n) for n in os.listdir(bin_dir)]):
        os.lchown(path, box.user.uid, box.user.gid)
    return bin_dir, state


def fake_env(box: Sandbox, bin_dir: str, state: str, **extra: str) -> dict[str, str]:
    return box.env({"FAKE_BATCH_DIR": state, **extra}, path=f"{bin_dir}:/usr/bin:/bin")


def calls(state: str) -> list[list[str]]:
    path = os.path.join(state, "calls.jsonl")
    return [json.loads(line) for line in open(path)] if os.path.exists(path) else []


def batch_folder(box: Sandbox, name: str) -> str:
    return os.path.join(box.state_home, "watchdog-singleton", "job-state", name, ".batch")


@pytest.mark.parametrize("args,problem", [
    (["--scheduler", "lsf"], "--scheduler 'lsf'"),
    (["--scheduler", "pbs", "--walltime", "24h"], "--walltime '24h'"),
    (["--scheduler", "pbs", "--walltime", "00:10:00", "--signal-lead", "600"], "--signal-lead 600"),
    (["--scheduler", "pbs", "--signal-lead", "5", "--grace", "10"], "longer than --grace"),
    (["--scheduler", "htcondor"], "condor_submit, condor_q, condor_rm not found on PATH"),
])
def test_submit_refuses_bad_input_in_one_line_and_submits_nothing(sandbox: Sandbox, args: list[str],
                                                                 problem: str) -> None:
    bin_dir, state = fake_tools(sandbox)
    name = sandbox.job("bad")
    env = fake_env(sandbox, bin_dir, state)
    if "htcondor" in args:
        env["PATH"] = "/usr/bin:/bin"  # no HTCondor here, and not its stand-ins
    proc = sandbox.ws("submit", name, *args, "--", "sleep", "100", env=env)
    assert proc.returncode == 2, proc.stderr
    assert problem in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert calls(state) == [] and not os.path.exists(batch_folder(sandbox, name))


def test_dry_run_prints_the_script_and_writes_and_submits_nothing(sandbox: Sandbox) -> None:
    bin_dir, state = fake_tools(sandbox)
    name = sandbox.job("dry")
    proc = sandbox.ok("submit", name, "--scheduler", "pbs", "--dry-run", "--", "sleep", "100",
                      env=fake_env(sandbox, bin_dir, state))
    assert f"#PBS -N ws-{name}" in proc.stdout and "not written: --dry-run" in proc.stdout
    assert calls(state) == [] and not os.path.exists(batch_folder(sandbox, name))


def run_job(box: Sandbox, script: str, env: dict[str, str]) -> subprocess.Popen[str]:
    """Run a batch script the way the batch system's node would: bash SCRIPT, as the test user."""
    return subprocess.Popen(["bash", script], env=env, cwd=box.user.home, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            **box.user.popen_kwargs())


def set_state(state: str, job_id: str, word: str) -> None:
    """What the scheduler does as a job starts ("R") or ends (None: it leaves the queue)."""
    path = os.path.join(state, "queue.json")
    queue = json.load(open(path))
    queue["jobs"] = [dict(j, state=word) if j["id"] == job_id else j for j in queue["jobs"]
                     if j["id"] != job_id or word]
    with open(path, "w") as f:
        json.dump(queue, f)


def queued(state: str) -> list[str]:
    return [j["id"] for j in json.load(open(os.path.join(state, "queue.json")))["jobs"]]


def read(path: str) -> str:
    return open(path).read() if os.path.exists(path) else ""


def test_pbs_chain_submits_one_successor_per_run_warns_the_daemon_and_refuses_a_double_submit(
        sandbox: Sandbox) -> None:
    bin_dir, state = fake_tools(sandbox)
    daemon = sandbox.write_helper("ckpt_daemon.py")
    name = sandbox.job("pbs")
    env = fake_env(sandbox, bin_dir, state)
    proc = sandbox.ok("submit", name, "--scheduler", "pbs", "--walltime", "00:00:30", "--signal-lead", "25",
                      "--grace", "3", "--", sys.executable, "-u", daemon, env=env)
    first = calls(state)
    assert [c[0] for c in first] == ["qstat", "qsub"] and "submitted" in proc.stdout
    job_id = proc.stdout.split("job ")[1].split(" ")[0]
    again = sandbox.ws("submit", name, "--scheduler", "pbs", "--", sys.executable, "-u", daemon, env=env)
    assert again.returncode == 1 and f"already queued or running as pbs job {job_id}" in again.stderr
    assert [c[0] for c in calls(state)].count("qsub") == 1

    # The job starts: its successor first, then the daemon; 5 s in (30 - 25), the timer warns.
    script = os.path.join(batch_folder(sandbox, name), "job.pbs.sh")
    started = time.monotonic()
    set_state(state, job_id, "R")
    job = run_job(sandbox, script, {**env, "PBS_JOBID": job_id})
    out, _ = job.communicate(timeout=60)
    set_state(state, job_id, "")
    assert 4 < time.monotonic() - started < 30, out
    qsubs = [c for c in calls(state) if c[0] == "qsub"]
    assert qsubs[1:] == [["qsub", "-W", f"depend=afterany:{job_id}", script]]
    folder = os.path.join(sandbox.state_home, "watchdog-singleton", "job-state", name)
    assert read(os.path.join(folder, "checkpoint")) == "1"
    logs = sandbox.ok("logs", name, "-n", "20", env=env).stdout
    assert "start run=1 resumed_from=0" in logs and "checkpointed 1" in logs
    assert "walltime in 25s: stopping" in sandbox.ok("logs", name, "--stderr", "-n", "50", env=env).stdout

    # The successor's run resumes from the checkpoint, and the log is appended, not truncated.
    successor = queued(state)[-1]
    set_state(state, successor, "R")
    job = run_job(sandbox, script, {**env, "PBS_JOBID": successor})
    wait_for(lambda: "start run=2 resumed_from=1" in read(os.path.join(
        sandbox.state_root, "logs", f"{name}.stdout.log")), 20, what="the successor's daemon")
    status = json.loads(sandbox.ok("status", name, "--json", env=env).stdout)
    assert status["batch"]["scheduler"] == "pbs" and status["running"]
    assert (status["runs"], status["restarts"], status["last_exit_code"]) == (2, 1, 0)  # the chain's, not one job's
    third = queued(state)[-1]
    assert status["batch"]["jobs"] == [{"id": successor, "state": "R", "running": True, "reason": None},
                                       {"id": third, "state": "H", "running": False, "reason": None}]
    assert f"running [pbs {successor} R, {third} H]" in sandbox.ok("status", env=env).stdout

    # stop: the marker ends the running job within its grace, the waiting successor is deleted,
    # and stop returns once the running job has left the queue.
    stop = subprocess.Popen([sys.executable, "-m", "watchdog_singleton", "stop", name], env=env, cwd=sandbox.dir,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **sandbox.user.popen_kwargs())
    job.communicate(timeout=30)
    assert job.returncode == 0
    assert read(os.path.join(folder, "checkpoint")) == "2"
    wait_for(lambda: queued(state) == [successor], 10, what="the waiting successor's qdel")
    assert stop.poll() is None  # it waits for the running job to leave the queue
    set_state(state, successor, "")
    out, err = stop.communicate(timeout=30)
    assert stop.returncode == 0 and "nothing of it is queued" in out, err
    # A successor that starts anyway ends at once and submits nothing.
    before = len(calls(state))
    job = run_job(sandbox, script, {**env, "PBS_JOBID": "999.fakeserver"})
    job.communicate(timeout=30)
    assert job.returncode == 0 and [c[0] for c in calls(state)[before:]] == []
    assert "the chain of" in read(os.path.join(sandbox.state_root, "logs", f"{name}.stderr.log"))


def test_htcondor_job_reruns_until_stopped_and_refuses_a_double_submit(sandbox: Sandbox) -> None:
    bin_dir, state = fake_tools(sandbox)
    daemon = sandbox.write_helper("ckpt_daemon.py")
    name = sandbox.job("htc")
    env = fake_env(sandbox, bin_dir, state)
    proc = sandbox.ok("submit", name, "--scheduler", "htcondor", "--walltime", "00:00:30", "--signal-lead", "25",
                      "--grace", "3", "--", sys.executable, "-u", daemon, env=env)
    sub = os.path.join(batch_folder(sandbox, name), "job.sub")
    assert [c for c in calls(state) if c[0] == "condor_submit"] == [["condor_submit", "-terse", sub]]
    assert "job 101.0" in proc.stdout
    again = sandbox.ws("submit", name, "--scheduler", "htcondor", "--", sys.executable, "-u", daemon, env=env)
    assert again.returncode == 1 and "already queued or running as htcondor job 101.0 (IDLE)" in again.stderr

    wrapper = submit_keys(read(sub))["executable"]
    job = run_job(sandbox, wrapper, {**env, "WATCHDOG_SINGLETON_BATCH_ID": "101.0"})
    job.communicate(timeout=60)
    assert job.returncode == 75  # not removed: HTCondor runs it again
    job = run_job(sandbox, wrapper, {**env, "WATCHDOG_SINGLETON_BATCH_ID": "101.0"})
    log = os.path.join(sandbox.state_root, "logs", f"{name}.stdout.log")
    wait_for(lambda: "resumed_from=1" in read(log), 20, what="the rerun's daemon")
    status = json.loads(sandbox.ok("status", name, "--json", env=env).stdout)
    assert (status["runs"], status["restarts"], status["last_exit_code"]) == (2, 1, 0), status
    sandbox.ok("stop", name, env=env)  # condor_rm of the queue entry; the marker ends the wrapper
    job.communicate(timeout=30)
    assert job.returncode == 0  # on_exit_remove: removed
    assert "checkpointed 2" in read(log)
    assert calls(state)[-1][0] == "condor_q"


# ---- real Slurm ----------------------------------------------------------------------------------

from slurmkit import slurm_cluster as slurm_cluster  # noqa: E402  (the real single-node Slurm, started once)


def squeue(box: Sandbox, name: str) -> list[dict[str, Any]]:
    jobs: list[dict[str, Any]] = (box.status(name).get("batch") or {}).get("jobs", [])
    return jobs


def slurm_submit(box: Sandbox, name: str, daemon: str, *more: str) -> subprocess.CompletedProcess[str]:
    return box.ws("submit", name, "--scheduler", "slurm", *more, "--", sys.executable, "-u", daemon,
                  env=box.env(path="/usr/local/bin:/usr/bin:/bin"))


@pytest.mark.slurm
def test_slurm_submit_runs_the_daemon_a_second_submit_waits_and_stop_leaves_nothing_queued(
        sandbox: Sandbox, slurm_cluster: Any) -> None:
    daemon = sandbox.write_helper("ckpt_daemon.py")
    name = sandbox.job("sl")
    first = slurm_submit(sandbox, name, daemon, "--walltime", "00:10:00", "--signal-lead", "60", "--grace", "5")
    assert first.returncode == 0, first.stderr
    log = os.path.join(sandbox.state_root, "logs", f"{name}.stdout.log")
    wait_for(lambda: "start run=1" in read(log), 90, what="the daemon to start under Slurm")
    wait_for(lambda: sandbox.status(name)["running"], 10, what="status to see the daemon")
    second = slurm_submit(sandbox, name, daemon, "--walltime", "00:10:00", "--signal-lead", "60", "--grace", "5")
    assert second.returncode == 0 and "waits behind it (--dependency=singleton)" in second.stderr
    states = wait_for(lambda: (lambda j: j if len(j) == 2 else None)(squeue(sandbox, name)), 20,
                      what="both jobs in squeue")
    assert sorted(j["state"] for j in states) == ["PENDING", "RUNNING"]
    assert read(log).count("start run=") == 1  # never two copies
    stop = sandbox.ok("stop", name, timeout=180)
    assert "nothing of it is queued" in stop.stdout
    assert squeue(sandbox, name) == []
    assert "checkpointed 1" in read(log)  # SIGTERM and grace, not a SIGKILL


@pytest.mark.slurm
@pytest.mark.slow
def test_slurm_warning_signal_checkpoints_requeues_and_the_next_run_resumes_with_the_log_appended(
        sandbox: Sandbox, slurm_cluster: Any) -> None:
    """About 150 s: USR1 comes 15 s into a 1-minute job, a requeued job waits cred_expire (120 s)."""
    daemon = sandbox.write_helper("ckpt_daemon.py")
    name = sandbox.job("rq")
    proc = slurm_submit(sandbox, name, daemon, "--walltime", "00:01:00", "--signal-lead", "45", "--grace", "5")
    assert proc.returncode == 0, proc.stderr
    job_id = proc.stdout.split("job ")[1].split(" ")[0]
    log = os.path.join(sandbox.state_root, "logs", f"{name}.stdout.log")
    errlog = os.path.join(sandbox.state_root, "logs", f"{name}.stderr.log")
    wait_for(lambda: "checkpointed 1" in read(log), 120, interval=0.5, what="USR1 -> SIGTERM -> checkpoint")
    wait_for(lambda: f"requeueing slurm job {job_id}" in read(errlog), 30, what="the requeue")
    wait_for(lambda: "start run=2 resumed_from=1" in read(log), 300, interval=1.0, what="the requeued run")
    text = read(log)
    assert text.index("start run=1") < text.index("checkpointed 1") < text.index("start run=2")
    assert [j["id"] for j in squeue(sandbox, name)] == [job_id]  # the same job, requeued
    sandbox.ok("stop", name, timeout=180)
    assert squeue(sandbox, name) == []


@pytest.mark.slurm
def test_slurm_chain_through_a_hand_requeue_shows_its_runs_and_uninstall_leaves_nothing(
        sandbox: Sandbox, slurm_cluster: Any) -> None:
    """About 40 s: a 2-minute walltime with the default lead, a hand `scontrol requeue` (the job runs
    again after cred_expire), status between and after, then stop and uninstall."""
    daemon = sandbox.write_helper("ckpt_daemon.py")
    name = sandbox.job("hq")
    proc = slurm_submit(sandbox, name, daemon, "--walltime", "00:02:00", "--grace", "3")
    assert proc.returncode == 0, proc.stderr
    job_id = proc.stdout.split("job ")[1].split(" ")[0]
    log = os.path.join(sandbox.state_root, "logs", f"{name}.stdout.log")
    errlog = os.path.join(sandbox.state_root, "logs", f"{name}.stderr.log")
    wait_for(lambda: "start run=1" in read(log), 90, interval=0.5, what="the daemon to start under Slurm")
    requeue = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True,
                             env=sandbox.env(path="/usr/bin:/bin"), **sandbox.user.popen_kwargs())
    assert requeue.returncode == 0, requeue.stderr
    wait_for(lambda: "start run=2 resumed_from=1" in read(log), 90, interval=0.5, what="the requeued run")
    info = wait_for(lambda: (lambda i: i if i["runs"] == 2 and i["running"] else None)(sandbox.status(name)), 30,
                    interval=0.5, what="status to show the second run")
    assert info["restarts"] == 1 and info["phase"] == "running", info
    assert "for good" not in read(errlog), read(errlog)
    sandbox.ok("stop", name, timeout=180)
    stopped = sandbox.status(name)
    assert (stopped["phase"], stopped["runs"]) == ("stopped", 2), stopped
    assert "for good" in read(errlog)
    sandbox.ok("uninstall", name, timeout=180)
    gone = sandbox.ws("status", name)
    assert gone.returncode == 4, gone.stderr
    assert slurm_jobs(sandbox, name) == []


def slurm_jobs(box: Sandbox, name: str) -> list[str]:
    """What squeue lists of the chain ws-NAME, asked directly (the chain's record may be gone)."""
    out = subprocess.run(["squeue", "-h", "-n", f"ws-{name}", "-o", "%i %T"], capture_output=True, text=True,
                         env=box.env(path="/usr/bin:/bin"), **box.user.popen_kwargs())
    assert out.returncode == 0, out.stderr
    lines: list[str] = out.stdout.splitlines()
    return lines


def test_stop_of_a_batch_chain_writes_the_marker_before_anything_is_cancelled(sandbox: Sandbox) -> None:
    """The order matters: a job that requeues or resubmits between a cancel and the marker would
    outlive the stop."""
    bin_dir, state = fake_tools(sandbox)
    name = sandbox.job("order")
    env = fake_env(sandbox, bin_dir, state)
    sandbox.ok("submit", name, "--scheduler", "pbs", "--", "sleep", "100", env=env)
    marker = os.path.join(batch_folder(sandbox, name), "stop")
    # qdel records whether the marker existed when it ran (fakebatch.py answers by its own name:
    # the wrapper calls it through a qdel link in another folder).
    link_dir = sandbox.mkdir("qdel-link")
    os.symlink(os.path.join(bin_dir, "fakebatch.py"), os.path.join(link_dir, "qdel"))
    qdel = os.path.join(bin_dir, "qdel")
    os.unlink(qdel)
    with open(qdel, "w") as f:
        f.write(f"#!/bin/sh\n[ -e {marker} ] && echo marker >> {state}/qdel-saw\nexec {link_dir}/qdel \"$@\"\n")
    os.chmod(qdel, 0o755)
    sandbox.ok("stop", name, env=env)
    assert read(os.path.join(state, "qdel-saw")) == "marker\n"
    assert json.load(open(os.path.join(state, "queue.json")))["jobs"] == []



# ---- the chain as a job: status, stop, start, uninstall (recording stand-ins, all three schedulers) --

SUBMIT_FILE = {"slurm": "job.sbatch", "pbs": "job.pbs.sh", "htcondor": "job-wrapper.sh"}
JOB_ENV = {"slurm": "SLURM_JOB_ID", "pbs": "PBS_JOBID", "htcondor": "WATCHDOG_SINGLETON_BATCH_ID"}
RUNNING_WORD = {"slurm": "RUNNING", "pbs": "R", "htcondor": "2"}


@pytest.mark.parametrize("walltime,lead", [("00:02:00", 30), ("00:10:00", 150), ("24:00:00", 300)])
def test_the_default_signal_lead_fits_the_walltime(sandbox: Sandbox, walltime: str, lead: int) -> None:
    name = sandbox.job("lead")
    proc = sandbox.ok("submit", name, "--scheduler", "slurm", "--walltime", walltime, "--dry-run", "--",
                      "sleep", "100")
    assert f"#SBATCH --signal=B:USR1@{lead}\n" in proc.stdout
    short = sandbox.ws("submit", name, "--scheduler", "slurm", "--walltime", "00:00:20", "--grace", "10",
                       "--dry-run", "--", "sleep", "100")
    assert short.returncode == 2 and "--walltime 00:00:20: too short" in short.stderr, short.stderr


def start_chain_job(box: Sandbox, state: str, scheduler: str, name: str, job_id: str, env: dict[str, str],
                    **more: str) -> subprocess.Popen[str]:
    """What the scheduler does when a job of the chain starts: the queue says it runs, and the node
    runs the script (HTCondor: the wrapper) with the job's id."""
    set_state(state, job_id, RUNNING_WORD[scheduler])
    return run_job(box, os.path.join(batch_folder(box, name), SUBMIT_FILE[scheduler]),
                   {**env, JOB_ENV[scheduler]: job_id, **more})


def test_a_slurm_chain_shows_its_runs_restarts_last_exit_and_the_reason_it_waits(sandbox: Sandbox) -> None:
    bin_dir, state = fake_tools(sandbox)
    daemon = sandbox.write_helper("ckpt_daemon.py")
    name = sandbox.job("runs")
    env = fake_env(sandbox, bin_dir, state)
    proc = sandbox.ok("submit", name, "--scheduler", "slurm", "--walltime", "00:02:00", "--grace", "3", "--",
                      sys.executable, "-u", daemon, env=env)
    job_id = proc.stdout.split("job ")[1].split(" ")[0]
    log = os.path.join(sandbox.state_root, "logs", f"{name}.stdout.log")

    # Slurm's warning: the shell stops the daemon (checkpoint), records the run and requeues.
    job = start_chain_job(sandbox, state, "slurm", name, job_id, env, SLURM_RESTART_COUNT="0")
    wait_for(lambda: "start run=1" in read(log), 20, what="the first run's daemon")
    job.send_signal(10)  # SIGUSR1
    job.communicate(timeout=30)
    assert ["scontrol", "requeue", job_id] in calls(state)
    queue = json.load(open(os.path.join(state, "queue.json")))
    queue["jobs"][0].update(state="PENDING", reason="BeginTime")
    json.dump(queue, open(os.path.join(state, "queue.json"), "w"))
    info = json.loads(sandbox.ws("status", name, "--json", env=env).stdout)
    assert (info["phase"], info["runs"], info["restarts"], info["last_exit_code"]) == ("waiting", 1, 0, 0), info
    assert info["batch"]["jobs"] == [{"id": job_id, "state": "PENDING", "running": False, "reason": "BeginTime"}]
    table = sandbox.ok("status", env=env).stdout
    row = next(line for line in table.splitlines() if line.startswith(name + " "))
    assert f"waiting [slurm {job_id} PENDING (BeginTime)]" in row and " 0 (1 run) " in row, table

    # The requeued job runs again: the chain's second run, one restart.
    job = start_chain_job(sandbox, state, "slurm", name, job_id, env, SLURM_RESTART_COUNT="1")
    wait_for(lambda: "start run=2 resumed_from=1" in read(log), 20, what="the requeued run")
    info = json.loads(sandbox.ws("status", name, "--json", env=env).stdout)
    assert (info["phase"], info["running"], info["runs"], info["restarts"]) == ("running", True, 2, 1), info
    assert info["started_at"]

    # stop: the running job gets `scancel --batch --signal=TERM` (here: the test sends it).
    stop = subprocess.Popen([sys.executable, "-m", "watchdog_singleton", "stop", name], env=env, cwd=sandbox.dir,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **sandbox.user.popen_kwargs())
    wait_for(lambda: ["scancel", "--batch", "--signal=TERM", job_id] in calls(state), 20, what="scancel --batch")
    job.send_signal(15)
    said, _ = job.communicate(timeout=30)  # the batch shell's output (Slurm: the job's --output)
    set_state(state, job_id, "")
    out, err = stop.communicate(timeout=30)
    assert stop.returncode == 0, err
    assert "stopping" in said and "for good" in said, said
    info = json.loads(sandbox.ws("status", name, "--json", env=env).stdout)
    assert (info["phase"], info["runs"], info["restarts"], info["last_exit_code"]) == ("stopped", 2, 1, 0), info
    assert "stopped [slurm]" in sandbox.ok("status", env=env).stdout


def test_a_sigterm_without_the_stop_marker_is_not_logged_as_stopping_for_good(sandbox: Sandbox) -> None:
    """A hand `scontrol requeue` (or preemption) sends SIGTERM: the daemon gets its grace, and the log
    does not say the chain ends, for Slurm runs the job again."""
    bin_dir, state = fake_tools(sandbox)
    daemon = sandbox.write_helper("ckpt_daemon.py")
    name = sandbox.job("hand")
    env = fake_env(sandbox, bin_dir, state)
    proc = sandbox.ok("submit", name, "--scheduler", "slurm", "--grace", "3", "--", sys.executable, "-u", daemon,
                      env=env)
    job_id = proc.stdout.split("job ")[1].split(" ")[0]
    log = os.path.join(sandbox.state_root, "logs", f"{name}.stdout.log")
    job = start_chain_job(sandbox, state, "slurm", name, job_id, env)
    wait_for(lambda: "start run=1" in read(log), 20, what="the daemon")
    job.send_signal(15)
    said, _ = job.communicate(timeout=30)  # the batch shell's output (Slurm: the job's --output)
    assert "checkpointed 1" in read(log)
    assert "for good" not in said and "a requeued job runs again" in said, said
    assert read(os.path.join(batch_folder(sandbox, name), "runs")).splitlines()[-1].endswith(" term")
    set_state(state, job_id, "")
    sandbox.ok("uninstall", name, env=env)


@pytest.mark.parametrize("scheduler", ["slurm", "pbs", "htcondor"])
def test_stop_then_uninstall_of_a_chain_leaves_nothing_queued_and_no_job(sandbox: Sandbox, scheduler: str) -> None:
    bin_dir, state = fake_tools(sandbox)
    name = sandbox.job("gone")
    env = fake_env(sandbox, bin_dir, state)
    sandbox.ok("submit", name, "--scheduler", scheduler, "--", "sleep", "100", env=env)
    assert len(queued(state)) == 1
    sandbox.ok("stop", name, env=env)
    assert queued(state) == []
    info = json.loads(sandbox.ws("status", name, "--json", env=env).stdout)
    assert info["phase"] == "stopped" and info["batch"]["stopped"]  # shown stopped until uninstalled
    assert f"stopped [{scheduler}]" in sandbox.ok("status", env=env).stdout
    done = sandbox.ok("uninstall", name, env=env)
    assert f"uninstalled {name}" in done.stdout
    assert queued(state) == [] and not os.path.exists(batch_folder(sandbox, name))
    gone = sandbox.ws("status", name, env=env)
    assert gone.returncode == 4 and f"no such job: {name}" in gone.stderr
    assert name not in sandbox.ok("status", env=env).stdout
    assert sandbox.ws("uninstall", name, env=env).returncode == 4


@pytest.mark.parametrize("scheduler", ["slurm", "pbs", "htcondor"])
def test_start_after_stop_submits_the_chain_again(sandbox: Sandbox, scheduler: str) -> None:
    bin_dir, state = fake_tools(sandbox)
    name = sandbox.job("again")
    env = fake_env(sandbox, bin_dir, state)
    sandbox.ok("submit", name, "--scheduler", scheduler, "--", "sleep", "100", env=env)
    sandbox.ok("stop", name, env=env)
    assert queued(state) == []
    started = sandbox.ok("start", name, env=env)
    assert "submitted" in started.stdout and "again" in started.stdout, started.stdout
    assert len(queued(state)) == 1
    assert not os.path.exists(os.path.join(batch_folder(sandbox, name), "stop"))  # the new chain goes on
    info = json.loads(sandbox.ws("status", name, "--json", env=env).stdout)
    assert info["phase"] == "waiting" and len(info["batch"]["submitted"]) == 2
    again = sandbox.ok("start", name, env=env)  # a queued chain is left as it is
    assert "already queued" in again.stdout and len(queued(state)) == 1
    sandbox.ok("restart", name, env=env)
    assert len(queued(state)) == 1
    sandbox.ok("uninstall", name, env=env)
    assert queued(state) == []
