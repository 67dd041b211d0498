"""PBS (PBS Pro, OpenPBS, Torque): a chain of jobs, each submitting its successor at its start.

- Users cannot requeue (`qrerun` needs Manager/Operator), so each job resubmits its own script
  with `-W depend=afterany:$PBS_JOBID` as soon as it starts: a self-submission at the end is lost
  when the walltime kills the job, and `afterok` never fires after a walltime kill.
- PBS sends no signal before the walltime kill: a watch in the background sends the batch shell
  USR1 LEAD seconds before the end, and the shell SIGTERMs our supervisor (the daemon gets --grace).
- PBS has no singleton dependency: `submit` refuses when a job named ws-NAME is queued or runs.
- `-o` is copied over (not appended to) at the end of a job: the shell appends its own output to
  the job's stderr log instead, and PBS's copy goes to a file of its own.
- `stop`: the stop marker (the watch sees it within 2 s and SIGTERMs the supervisor; a successor
  that starts anyway exits at once without resubmitting), `qdel` of what waits, and `qdel` of
  what still runs after grace + 60 s.
"""

from __future__ import annotations

import getpass
import os

from . import Entry, Scheduler, Spec, chain_ended, hms, prologue, q, stop_check, supervise, timer, tool

RUNNING = {"R", "E", "B", "X"}  # running, exiting, array begun, subjob expired
QUEUED = {"Q", "H", "W", "T", "S", "U", "M"}  # C and F are finished jobs that qstat still lists


class PBS(Scheduler):
    name = "pbs"
    tools = ("qsub", "qstat", "qdel")
    script = "job.pbs.sh"

    def render(self, spec: Spec) -> dict[str, str]:
        script_path = os.path.join(spec.folder, self.script)
        directives = [f"-N {spec.job_name}", f"-l walltime={hms(spec.walltime)}", "-j oe",
                      f"-o {os.path.join(spec.folder, 'pbs.out')}"]
        if spec.account:
            directives.append(f"-A {spec.account}")
        if spec.queue:
            directives.append(f"-q {spec.queue}")
        head = "#!/bin/bash\n" + "".join(f"#PBS {d}\n" for d in directives + list(spec.extra))
        body = (
            prologue(spec, f"Keeps {spec.name} alive through PBS: each job submits its successor at its start "
                           "(afterany), a timer warns before the walltime.", '"$PBS_JOBID"')
            + f"exec >>{q(spec.stderr_log)} 2>&1  # appended, never truncated\n"
            + "trap 'ws_say \"walltime in {lead}s: stopping $ws_name (grace ${{ws_grace}}s)\"; ws_term walltime' USR1\n"
              .format(lead=spec.signal_lead)
            + "trap 'ws_say \"SIGTERM: stopping $ws_name\"; ws_term stop' TERM\n"
            + stop_check()
            + timer(spec)
            + "ws_say \"pbs job $PBS_JOBID runs $ws_name on $(hostname)\"\n"
            + "# The successor first: a job killed at its walltime can no longer submit one.\n"
            + f"if ws_next=$(qsub -W depend=afterany:\"$PBS_JOBID\" {q(script_path)}); then\n"
            + "  ws_say \"successor $ws_next waits for $PBS_JOBID (afterany)\"\n"
            + "else\n"
            + "  ws_say \"qsub of the successor failed: the chain ends with this job\"\n"
            + chain_ended(spec, "  false", "qsub of the successor failed: the chain ends with this job", True)
            + "fi\n"
            + supervise(spec)
            + "kill \"$ws_watch\" 2>/dev/null\n"
            + "exit \"$ws_code\"\n"
        )
        return {self.script: head + body}

    def submit(self, spec: Spec, script: str) -> list[str]:
        return [tool(["qsub", script], "qsub").strip()]

    def entries(self, job_name: str) -> list[Entry]:
        """From `qstat -f`, which PBS Pro, OpenPBS and Torque all print as `Job Id:` blocks."""
        out = tool(["qstat", "-f"], "qstat")
        user = getpass.getuser()
        found = []
        for block in ("\n" + out).split("\nJob Id:")[1:]:
            job_id = block.split("\n", 1)[0].strip()
            attrs: dict[str, str] = {}
            for line in block.splitlines()[1:]:
                key, sep, value = line.strip().partition(" = ")
                if sep:
                    attrs[key] = value.strip()
            owner = attrs.get("Job_Owner", "").split("@")[0]
            state = attrs.get("job_state", "")
            if attrs.get("Job_Name") == job_name and owner == user and state in RUNNING | QUEUED:
                found.append(Entry(job_id, state, state in RUNNING))
        return found

    def cancel(self, ids: list[str]) -> None:
        if ids:
            tool(["qdel", *ids], "qdel")
