"""The phases of a job's run on this host, as its run state records them, and which may follow which.

Strings, not an `enum`: they go into the state file as they are, and `enum` would cost the
resident supervisor about a megabyte. The supervisor changes its phase in one place
(`supervisor/life.Lifecycle.enter`), which checks the step against `NEXT`; the launcher and the importer only
ever write the first phase of a run (`STARTING`, or `RUNNING` for a lean run or an adopted copy).
"""

from __future__ import annotations


class Phase:
    STARTING = "starting"  # the command is about to start (at once, after a quick exit, or a lease granted)
    RUNNING = "running"  # the daemon (or the tree it left, with --forking) runs
    WAITING = "waiting"  # periodic: for the next due time
    BACKOFF = "backoff"  # a pause after quick exits in a row
    STANDBY = "standby"  # cluster: another host holds the lease
    STOPPING = "stopping"  # the supervisor stops the tree (a stop, a timeout, --max-lifetime, a lost lease)
    STOPPED = "stopped"  # ended by a stop request
    EXITED = "exited"  # done: the restart policy, the schedule or the lease said so


P = Phase
# phase -> the phases that may follow it (staying in a phase is always allowed). Tuples, not sets:
# the resident keeps them all its life.
_TO_A_START = (P.STARTING, P.WAITING, P.BACKOFF, P.STANDBY)
NEXT: dict[str, tuple[str, ...]] = {
    P.STARTING: (P.RUNNING, P.WAITING, P.BACKOFF, P.STANDBY, P.STOPPING, P.EXITED),
    # a run ends: at once again, a pause, the next due time (or one due already: the lease gate), or
    # done; a lease lost mid-run stops it
    P.RUNNING: (P.STARTING, P.WAITING, P.BACKOFF, P.STANDBY, P.STOPPING, P.EXITED),
    P.WAITING: (P.STARTING, P.STANDBY, P.STOPPING, P.EXITED),
    P.BACKOFF: (P.STARTING, P.STANDBY, P.STOPPING),
    P.STANDBY: (P.STARTING, P.WAITING, P.STOPPING),
    # a stop of leftovers, a timeout or a lifetime goes on to the next run, or the tree is followed
    P.STOPPING: (*_TO_A_START, P.RUNNING, P.STOPPED, P.EXITED),
    P.STOPPED: (),
    # the daemon exits while its tree is being stopped, then the stop ends; or `stop` of a job that is
    # done already still stops (and saves) what is left
    P.EXITED: (P.STOPPING, P.STOPPED),
}


def allowed(old: str, new: str) -> bool:
    return old == new or new in NEXT.get(old, ())
