"""Slurm: one job name per chain, a singleton dependency, a warning signal and a self-requeue.

- `--dependency=singleton` with a fixed `-J ws-NAME`: one running job per name and user, cluster
  wide, so a second submit only waits.
- `--signal=B:USR1@LEAD`: `B:` signals the batch shell (without it only job steps get it).
- `--requeue` (sites may set JobRequeue=0) and `--open-mode=append` (the default truncates the
  output file at every requeue).
- On USR1 the shell SIGTERMs our supervisor (the daemon gets --grace), waits, then
  `scontrol requeue $SLURM_JOB_ID`: the same job id comes back, SLURM_RESTART_COUNT counts up.
- `stop`: the stop marker, `scancel` of pending entries, and `scancel --batch --signal=TERM` of the
  running one: only the batch shell gets SIGTERM, which it passes to the supervisor, so the daemon
  gets its whole grace (a plain scancel gives it Slurm's KillWait) and nothing requeues.
- A SIGTERM without the stop marker is Slurm's (a hand `scontrol requeue`, `scancel`, preemption):
  the daemon gets its grace and the log says so, not "for good": a requeued job runs again.
"""

from __future__ import annotations

from . import Entry, Scheduler, Spec, chain_ended, prologue, stop_check, supervise, tool

RUNNING = {"RUNNING", "COMPLETING", "CONFIGURING", "SUSPENDED", "STOPPED", "SIGNALING", "STAGE_OUT",
           "RESIZING"}


def slurm_time(seconds: int) -> str:
    days, rest = divmod(seconds, 86400)
    return f"{days}-{rest // 3600:02d}:{rest // 60 % 60:02d}:{rest % 60:02d}"


class Slurm(Scheduler):
    name = "slurm"
    tools = ("sbatch", "squeue", "scancel")
    script = "job.sbatch"

    def render(self, spec: Spec) -> dict[str, str]:
        log = spec.stderr_log.replace("%", "%%")  # sbatch expands %j, %u, ... in file names
        directives = [f"--job-name={spec.job_name}", "--dependency=singleton", f"--time={slurm_time(spec.walltime)}",
                      f"--signal=B:USR1@{spec.signal_lead}", "--requeue", "--open-mode=append",
                      f"--output={log}", f"--error={log}", "--nodes=1", "--ntasks=1"]
        if spec.account:
            directives.append(f"--account={spec.account}")
        if spec.queue:
            directives.append(f"--partition={spec.queue}")
        head = "#!/bin/bash\n" + "".join(f"#SBATCH {d}\n" for d in directives + list(spec.extra))
        body = (
            prologue(spec, f"Keeps {spec.name} alive through Slurm: singleton dependency, USR1 before the walltime, "
                           "self-requeue.", '"$SLURM_JOB_ID"')
            + "trap 'ws_say \"USR1: the walltime is near: stopping $ws_name (grace ${ws_grace}s), then requeueing\"; "
              "ws_term requeue' USR1\n"
            + "# The stop marker says a SIGTERM is `stop`'s; without it, Slurm's own (the job may run again).\n"
              "ws_on_term() {\n"
              "  if [ -e \"$ws_stop\" ]; then\n"
              "    ws_say \"SIGTERM after the stop marker: stopping $ws_name for good\"; ws_term stop\n"
              "  else\n"
              "    ws_say \"SIGTERM from Slurm (requeue, scancel, preemption, time limit): stopping $ws_name \"\\\n"
              "\"(grace ${ws_grace}s); a requeued job runs again\"; ws_term term\n"
              "  fi\n"
              "}\n"
              "trap ws_on_term TERM\n"
            + stop_check()
            + "ws_say \"slurm job $SLURM_JOB_ID (restart ${SLURM_RESTART_COUNT:-0}) runs $ws_name on $(hostname)\"\n"
            + supervise(spec)
            + "if [ \"$ws_why\" = requeue ]; then\n"
            + "  if [ -e \"$ws_stop\" ]; then\n"
            + "    ws_say \"stop marker $ws_stop: not requeued\"\n"
            + "  else\n"
            + "    ws_say \"requeueing slurm job $SLURM_JOB_ID\"\n"
            + "    scontrol requeue \"$SLURM_JOB_ID\"\n"
            + "  fi\n"
            + "fi\n"
            + chain_ended(spec, "[ \"$ws_why\" = requeue ]", "the supervisor ended (${ws_why:-by itself})")
            + "exit \"$ws_code\"\n"
        )
        return {self.script: head + body}

    def submit(self, spec: Spec, script: str) -> list[str]:
        out = tool(["sbatch", "--parsable", script], "sbatch")
        return [out.strip().split(";")[0]]

    def entries(self, job_name: str) -> list[Entry]:
        import getpass

        out = tool(["squeue", "-h", "-u", getpass.getuser(), "-n", job_name, "-o", "%i %T %r"], "squeue")
        found = []
        for line in out.splitlines():
            parts = line.split(None, 2)
            if len(parts) >= 2:
                reason = parts[2].strip() if len(parts) == 3 else ""
                running = parts[1] in RUNNING
                found.append(Entry(parts[0], parts[1], running,
                                   "" if running or reason in ("None", "(null)") else reason))
        return found

    def cancel(self, ids: list[str]) -> None:
        if ids:
            tool(["scancel", *ids], "scancel")

    def ask_stop(self, entry: Entry, spec: Spec) -> None:
        tool(["scancel", "--batch", "--signal=TERM", entry.id], "scancel")

