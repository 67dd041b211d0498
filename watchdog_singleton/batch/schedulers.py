"""Every scheduler by name, and the contrib/batch templates they render.

Kept out of the package's __init__ (what every scheduler module imports), so that no scheduler
and the interface import each other.
"""

from __future__ import annotations

from ..errors import UserError
from . import Scheduler, Spec
from .htcondor import HTCondor
from .pbs import PBS
from .slurm import Slurm


def registry() -> dict[str, Scheduler]:
    return {s.name: s for s in (Slurm(), PBS(), HTCondor())}


def get(name: str) -> Scheduler:
    known = registry()
    if name not in known:
        raise UserError(f"--scheduler {name!r}: must be one of {', '.join(known)}")
    return known[name]


# ---- the templates in contrib/batch ---------------------------------------------------------------

TEMPLATE_FILES = {"slurm": {"job.sbatch": "slurm.sbatch"}, "pbs": {"job.pbs.sh": "pbs.sh"},
                  "htcondor": {"job.sub": "htcondor.sub", "job-wrapper.sh": "htcondor-wrapper.sh"}}


def example_spec() -> Spec:
    """The example the templates show: replace `me`, `login1`, `mydaemon` and the command."""
    return Spec(name="mydaemon", command=["python3", "-u", "daemon.py"], workdir="/home/me/mydaemon",
                root="/home/me/.local/state/watchdog-singleton/login1", runner=["watchdog-singleton"],
                walltime=24 * 3600, signal_lead=300, grace=60.0,
                env={"PATH": "/home/me/.local/bin:/usr/local/bin:/usr/bin:/bin"})


def templates() -> dict[str, str]:
    """contrib/batch's file name -> text, rendered by the same code as `submit`."""
    out: dict[str, str] = {}
    spec = example_spec()
    for sched_name, names in TEMPLATE_FILES.items():
        rendered = get(sched_name).render(spec)
        for filename, target in names.items():
            out[target] = rendered[filename]
    return out
