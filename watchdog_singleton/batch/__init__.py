"""Keeping a daemon alive through a batch system: what every scheduler must do, and the registry.

Usage::

    sched = schedulers.get("slurm")         # schedulers.py: the registry
    files = sched.render(spec)              # {"job.sbatch": "#!/bin/bash ..."}
    ids = sched.submit(spec, folder)        # ["1234"]
    sched.entries(spec.job_name)            # [Entry("1234", "RUNNING", running=True)]
    sched.cancel(["1234"])

The chain as a job (status, stop, start, uninstall) is in chain.py.

One module per scheduler (slurm.py, pbs.py, htcondor.py), registered in schedulers.py. Each
renders a script whose batch shell runs `watchdog-singleton run NAME ... -- CMD` as our
supervisor in the background, waits on it (bash runs traps only between commands), and on the
walltime warning gives it SIGTERM, so the daemon gets its --grace to checkpoint before the next
job of the chain starts. A stop marker in the job's batch folder ends the chain: no script
requeues, resubmits or reruns once it exists.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass, field
from typing import Any, Optional

from .. import files, paths
from ..errors import FAILED, UserError
from ..timefmt import FORMAT as TIME_FORMAT

JOB_PREFIX = "ws-"  # the batch job's name: ws-NAME, the same for every job of the chain
RECORD = "submission.json"
STOP = "stop"
RUNS = "runs"  # one line per start and end of a job of the chain, appended by the scripts (chain.read_runs)
DEFAULT_LEAD = 300  # --signal-lead for a long walltime; shorter ones get default_lead()
LOCK_DIR_EXPR = '"/tmp/watchdog-singleton-$(id -u)"'  # node-local; literal /tmp, not a shared $TMPDIR


@dataclass
class Spec:
    """What one chain runs and where its files are. Paths are plain strings; `render` quotes them."""

    name: str
    command: list[str]
    workdir: str
    root: str  # the per-host state folder of the submit host: run state and logs are written there
    runner: list[str]  # how the script calls us: [python, -I, -m, watchdog_singleton] or [watchdog-singleton]
    walltime: int = 24 * 3600
    signal_lead: int = 300
    grace: float = 10.0
    account: str = ""
    queue: str = ""
    extra: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)  # exported by the script (PATH and the loader's)
    cluster: str = ""  # the lease's database; "none": say so (the node may have $WATCHDOG_SINGLETON_CLUSTER)
    lease: float = 60.0
    standby: bool = False
    rotate: bool = False
    on_failure: list[str] = field(default_factory=list)  # notify.py: the chain ending for good calls these
    mail: str = ""
    notify_every: float = 3600.0

    @property
    def job_name(self) -> str:
        return JOB_PREFIX + self.name

    @property
    def folder(self) -> str:
        return paths.batch_dir(self.root, self.name)

    @property
    def state_folder(self) -> str:
        return paths.job_state_dir(self.root, self.name)

    @property
    def log_dir(self) -> str:
        return paths.default_log_dir(self.root)

    @property
    def stdout_log(self) -> str:
        return paths.log_files(self.log_dir, self.name)[0]

    @property
    def stderr_log(self) -> str:
        return paths.log_files(self.log_dir, self.name)[1]

    @property
    def stop_marker(self) -> str:
        return os.path.join(self.folder, STOP)

    @property
    def runs_log(self) -> str:
        return os.path.join(self.folder, RUNS)


@dataclass
class Entry:
    """One queue entry of a chain: the scheduler's id and state word, whether it runs now, and the
    scheduler's reason when it waits (Slurm's `ReqNodeNotAvail`, `BeginTime`, ...; "" if none)."""

    id: str
    state: str
    running: bool
    reason: str = ""

    def word(self) -> str:
        return f"{self.state} ({self.reason})" if self.reason else self.state


class Scheduler:
    """What a scheduler must do. Subclasses set the class attributes and the five methods."""

    name = ""
    tools: tuple[str, ...] = ()  # submit, query, cancel: all must be on PATH
    script = ""  # the file name `submit` hands to the submit tool

    def render(self, spec: Spec) -> dict[str, str]:
        """File name -> text of every file the chain needs; `script` among them."""
        raise NotImplementedError

    def submit(self, spec: Spec, script: str) -> list[str]:
        raise NotImplementedError

    def entries(self, job_name: str) -> list[Entry]:
        """This user's queue entries named `job_name` that are queued, held or running."""
        raise NotImplementedError

    def cancel(self, ids: list[str]) -> None:
        raise NotImplementedError

    def ask_stop(self, entry: Entry, spec: Spec) -> None:
        """Ask a running entry to end: its supervisor gets SIGTERM and the daemon its grace.
        The stop marker exists already; by default the script's own watch sees it."""

    def missing_tools(self) -> list[str]:
        return [tool for tool in self.tools if shutil.which(tool) is None]


def tool(argv: list[str], what: str) -> str:
    """Run a scheduler tool; its stdout, or one line (UserError, exit 1) saying why it failed."""
    try:
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
    except FileNotFoundError:
        raise UserError(f"{what}: {argv[0]} not found on PATH", FAILED) from None
    except subprocess.TimeoutExpired:
        raise UserError(f"{what}: {argv[0]} did not answer within 120 s", FAILED) from None
    if proc.returncode != 0:
        lines = (proc.stderr.strip() or proc.stdout.strip() or f"exit code {proc.returncode}").splitlines()
        raise UserError(f"{what}: {argv[0]} failed: {lines[-1]}", FAILED)
    return proc.stdout


# ---- the shell every script shares -------------------------------------------------------------

def q(word: str) -> str:
    return shlex.quote(word)


def run_line(spec: Spec) -> str:
    """The supervisor's command line: our `run` with a node-local lock, the chain's state folder
    (--state-dir keys WATCHDOG_SINGLETON_STATE_DIR by NAME), appended logs, a restart when the
    daemon dies within the allocation."""
    words = [*map(q, spec.runner), "run", "--state-dir", q(spec.root), "--lock-dir", LOCK_DIR_EXPR,
             "--log-dir", q(spec.log_dir), "--workdir", q(spec.workdir), "--grace", f"{spec.grace:g}",
             "--restart", "always", *cluster_words(spec), q(spec.name), "--", *map(q, spec.command)]
    return " ".join(words)


def cluster_words(spec: Spec) -> list[str]:
    """run's cluster options for the chain: a copy on each batch node takes NAME's lease."""
    if not spec.cluster:
        return []
    if spec.cluster == "none":
        return ["--cluster", "none"]
    return ["--cluster", q(spec.cluster), "--lease", f"{spec.lease:g}", *(["--standby"] if spec.standby else []),
            *(["--rotate"] if spec.rotate else [])]


def prologue(spec: Spec, title: str, job_id: str) -> str:
    """Variables, the log line helper, the run record helper and the trap helper; `job_id` is the
    shell expression of this job's id in the scheduler."""
    exports = "".join(f"export {key}={q(value)}\n" for key, value in sorted(spec.env.items()))
    return (
        f"# {title}\n"
        f"# Generated by watchdog-singleton submit (see docs/batch.md). Stop the chain with:\n"
        f"#   watchdog-singleton stop {spec.name}\n"
        f"# or by hand: touch {q(spec.stop_marker)}, then cancel what is queued.\n"
        "set -u\n"
        f"{exports}"
        f"ws_name={q(spec.name)}\n"
        f"ws_stop={q(spec.stop_marker)}\n"
        f"ws_grace={spec.grace:g}\n"
        f"ws_runs={q(spec.runs_log)}\n"
        f"ws_job={job_id}\n"
        "ws_pid=\n"
        "ws_why=\n"
        "ws_say() { printf '[watchdog-singleton batch %s] %s\\n' \"$(date '+" + TIME_FORMAT + "')\" \"$*\"; }\n"
        "# The chain's run record, read by `status`: start TIME JOB HOST, end TIME JOB CODE WHY.\n"
        "ws_record() { printf '%s %s %s\\n' \"$1\" \"$(date +%s)\" \"$2\" >>\"$ws_runs\" 2>/dev/null; }\n"
        "# SIGTERM to our supervisor: it gives the daemon SIGTERM and --grace, then SIGKILL.\n"
        "ws_term() { ws_why=$1; if [ -n \"$ws_pid\" ]; then kill -TERM \"$ws_pid\" 2>/dev/null; fi; }\n"
    )


def chain_ended(spec: Spec, unless: str, why: str, background: bool = False) -> str:
    """The line that tells of a chain ending for good without `stop` (notify.py: --on-failure,
    --mail), unless the shell test `unless` holds; "" when the chain has neither."""
    if not (spec.on_failure or spec.mail):
        return ""
    call = (f"{' '.join(map(q, spec.runner))} _notify {q(spec.root)} \"$ws_name\" chain-ended \"${{ws_code:-}}\" "
            f"\"{why}\"")
    return f"{unless} || [ -e \"$ws_stop\" ] || {call}{' &' if background else ''}\n"


def stop_check(code: int = 0) -> str:
    return ("if [ -e \"$ws_stop\" ]; then\n"
            "  ws_say \"stop marker $ws_stop: the chain of $ws_name ends here\"\n"
            f"  exit {code}\n"
            "fi\n")


def supervise(spec: Spec) -> str:
    """Start the supervisor in the background and wait for it, re-waiting after each trap."""
    return (
        "ws_record start \"$ws_job $(hostname)\"\n"
        f"{run_line(spec)} &\n"
        "ws_pid=$!\n"
        "if [ -n \"$ws_why\" ]; then kill -TERM \"$ws_pid\" 2>/dev/null; fi  # a signal came before $!\n"
        "ws_code=0\n"
        "while :; do\n"
        "  wait \"$ws_pid\"; ws_code=$?\n"
        "  kill -0 \"$ws_pid\" 2>/dev/null || break  # a trap ended the wait, not the supervisor\n"
        "done\n"
        "ws_say \"supervisor of $ws_name ended (code $ws_code${ws_why:+, after $ws_why})\"\n"
        "ws_record end \"$ws_job $ws_code ${ws_why:-exit}\"\n"
    )


def timer(spec: Spec) -> str:
    """PBS sends nothing before the walltime kill, HTCondor has no walltime of its own: a watch in
    the background sends the batch shell USR1 LEAD seconds before the end, or TERM as soon as the
    stop marker appears (so `stop` gives the daemon its whole grace, whatever the site's kill delay)."""
    return (
        f"ws_end=$(( $(date +%s) + {spec.walltime - spec.signal_lead} ))  # walltime - lead, from the start\n"
        "( while :; do\n"
        "    if [ -e \"$ws_stop\" ]; then kill -TERM $$; exit 0; fi\n"
        "    ws_left=$(( ws_end - $(date +%s) ))\n"
        "    if [ \"$ws_left\" -le 0 ]; then kill -USR1 $$; exit 0; fi\n"
        "    sleep $(( ws_left < 2 ? ws_left : 2 ))\n"
        "  done ) &\n"
        "ws_watch=$!\n"
    )


# ---- walltime ----------------------------------------------------------------------------------

def parse_walltime(text: str) -> int:
    """[DAYS-]HH:MM:SS, HH:MM:SS with any hours, or MINUTES; seconds, or a UserError."""
    match = re.fullmatch(r"(?:(\d+)-)?(\d+):([0-5]?\d):([0-5]?\d)", text.strip())
    if match:
        days, hours, minutes, seconds = (int(g) if g else 0 for g in match.groups())
        total = ((days * 24 + hours) * 60 + minutes) * 60 + seconds
    elif text.strip().isdigit():
        total = int(text.strip()) * 60
    else:
        raise UserError(f"--walltime {text!r}: use HH:MM:SS, DAYS-HH:MM:SS or minutes (e.g. 24:00:00)")
    if total <= 0:
        raise UserError(f"--walltime {text!r}: must be longer than 0")
    return total


def default_lead(walltime: int, grace: float) -> int:
    """--signal-lead when none is given: 300 s, but no more than a quarter of the walltime, and at
    least the daemon's grace + 20 s (so a 2-minute walltime gets a 30-second warning)."""
    return min(DEFAULT_LEAD, max(walltime // 4, int(grace) + 20))


def hms(seconds: int) -> str:
    return f"{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


# ---- the record of a submission ------------------------------------------------------------------

def record_path(root: str, name: str) -> str:
    return os.path.join(paths.batch_dir(root, name), RECORD)


def load_record(root: str, name: str) -> Optional[dict[str, Any]]:
    return files.read_json(record_path(root, name))


def save_record(root: str, name: str, record: dict[str, Any]) -> None:
    files.write_json(record_path(root, name), record)


def submitted_names(root: str) -> list[str]:
    """Every NAME with a submission record (they live beside the job-state folders, by name)."""
    base = os.path.dirname(paths.job_state_dir(root, "x"))
    try:
        names = os.listdir(base)
    except OSError:
        return []
    return sorted(n for n in names if os.path.isfile(record_path(root, n)))


def spec_of(record: dict[str, Any]) -> Spec:
    return Spec(name=record["name"], command=list(record["command"]), workdir=record["workdir"],
                root=record["root"], runner=list(record["runner"]), walltime=int(record["walltime"]),
                signal_lead=int(record["signal_lead"]), grace=float(record["grace"]),
                cluster=str(record.get("cluster", "")), lease=float(record.get("lease", 60.0)),
                standby=bool(record.get("standby", False)), rotate=bool(record.get("rotate", False)),
                on_failure=list(record.get("on_failure", [])), mail=str(record.get("mail", "")),
                notify_every=float(record.get("notify_every", 3600.0)))
