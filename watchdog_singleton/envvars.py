"""Every environment variable we read or set, by name, in one place.

Standard library only, and no code: the tick and the resident supervisor import it.
"""

# Where things live (paths.py).
LOCK_DIR_ENV = "WATCHDOG_SINGLETON_LOCK_DIR"
HOME_ENV = "WATCHDOG_SINGLETON_HOME"  # overrides the whole per-host folder
# Inside a job, WATCHDOG_SINGLETON_STATE_DIR is the job's own checkpoint folder; outside one it
# is still read as the per-host folder's override, its meaning before jobs had that folder.
STATE_DIR_ENV = "WATCHDOG_SINGLETON_STATE_DIR"

# What every process of a job's tree carries (procs.py, supervisor.py).
JOB_ENV = "WATCHDOG_SINGLETON_JOB"  # the job's name, for the daemon's own use
NAME_ENV = "WATCHDOG_SINGLETON_NAME"  # the same, under the name periodic jobs and batch scripts use
TOKEN_ENV = "WATCHDOG_SINGLETON_LOCK"  # the lock path: marks every process of the job's tree

# The cluster lease (leases/).
CLUSTER_ENV = "WATCHDOG_SINGLETON_CLUSTER"
FENCING_TOKEN_ENV = "WATCHDOG_SINGLETON_FENCING_TOKEN"

# Batch scripts (batch/htcondor.py writes it into the submit file; slurm and pbs use their own).
BATCH_ID_ENV = "WATCHDOG_SINGLETON_BATCH_ID"

# A notification hook's environment (notify.py).
EVENT_ENV = "WATCHDOG_SINGLETON_EVENT"
EXIT_ENV = "WATCHDOG_SINGLETON_EXIT"  # the last exit code ("" when there was none)
DETAIL_ENV = "WATCHDOG_SINGLETON_DETAIL"  # one line: what happened, as the log says it
STDOUT_LOG_ENV = "WATCHDOG_SINGLETON_STDOUT_LOG"
STDERR_LOG_ENV = "WATCHDOG_SINGLETON_STDERR_LOG"
SENDMAIL_ENV = "WATCHDOG_SINGLETON_SENDMAIL"  # the sendmail program to use (else PATH, /usr/sbin, /usr/lib)
HOOK_TIMEOUT_ENV = "WATCHDOG_SINGLETON_HOOK_TIMEOUT"  # in the job's env: another limit, 1 to 3600 s

# A farm task's environment (farm/workers.py).
FARM_ENV = "WATCHDOG_SINGLETON_FARM"  # the farm's work folder
TASK_ENV = "WATCHDOG_SINGLETON_FARM_TASK"
SLOT_ENV = "WATCHDOG_SINGLETON_FARM_SLOT"
PROC_NUMBER_ENV = "PROC_NUMBER"  # the slot again, where PyTaskFarmer puts the task index
ATTEMPT_ENV = "WATCHDOG_SINGLETON_FARM_ATTEMPT"
GENERATION_ENV = "WATCHDOG_SINGLETON_FARM_GENERATION"  # the claim's fencing token: grows at every claim of the task
NAMESPACE_ENV = "WATCHDOG_SINGLETON_FARM_NAMESPACE"  # "0": no PID namespace for the tasks (the fallback)
