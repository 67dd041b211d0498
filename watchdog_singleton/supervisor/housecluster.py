"""The cluster house: the shared resident of a user's shared cluster jobs (install --shared with
--cluster), and its beats to the watcher above it.

    duty = ClusterDuty(house.members, send=lambda deadline, grace: beat(beat_fd, deadline, grace))
    house.duty = duty                  # before house.open(): takes open each job's lease engine
    ...                                # each grant, renew, loss and turn of the loop beats

It is a resident of its own, apart from the plain one (`housewire.house_name(root, cluster=True)`),
so that a user without cluster jobs never loads the driver. The tick that becomes it first splits
a watcher above itself (tick/handover.py, as a cluster job's own supervisor does): the watcher is
its parent and a subreaper, so when the house dies everything below it (every job's tree) comes
to the watcher, which stops it all.

Each job is a `core.Supervisor` with its ClusterGuard and LeaseGate, as a supervisor of its own
has them, and its own lease row, token and give-up deadline. What they share is the database:
one connection per database URL (`shared_engine`: each job's engine over the URL's link), and
one renew thread per link (cluster/renewer.py) that renews every grant held there in one
statement once any of them is due. Each job's G is still sent + renew_deadline from the send
time of the statement that renewed it (read before waiting for the connection, so never later
than the real send); a row that does not come back is lost for its job alone, a database error
is a retry for all, each until its own G. The gate's asks, releases and turns go over the same
connection, one round trip at a time, each waiting for it at most one round trip's time.

What the house adds is one beat for all of them: a deadline W and a grace g
such that, should the house stop answering (SIGSTOP, a hang) or die, the watcher stopping every
tree at W with g (then SIGKILL) ends each job's tree before its lease can pass. For job j, with
G its give-up deadline (CLOCK_BOOTTIME, from the send time of its last renew that succeeded,
keeper.py) and room = stop_budget - KILL_LANDS, its tree must get SIGKILL by K = G + room:

- while j holds its lease and G is ahead: W_j = G + head, g_j = the capped grace (less the head);
- once G passed or the lease is lost, while its tree may live: W_j = K, g_j = 0. The house itself
  stops that tree at G with the capped grace, which the head start keeps short of K by `head`.

W = min W_j and g = min over j of min(g_j, K_j - W), so W + g <= K_j for every j. The head
start is why the watcher never stops all the trees when one job loses its lease while the house
is well: the house gives up on j at G and switches j to its second line (W_j = K) before W = G +
head comes. It is taken out of the grace (`Timing.head`), half the room at most. Beats are sent
at each grant, once after each renew round trip (for all the jobs it renewed), and from every
wait of the house's loop, which never sleeps past the next G. The batched renew keeps this
true: renewing a job early, or telling its new G a moment after the round trip's other answers,
only ever moves that job's G (so W) later, and a watcher acting on the earlier W is early, never
late; a new grant (a G that was not counted before) is told at once, as before.
"""

from __future__ import annotations

import _thread
from dataclasses import replace

from ..cluster import KILL_LANDS, Timing
from ..cluster.keeper import boottime

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing stays out of the resident supervisor's memory; annotations are strings
    from typing import Callable, Optional

    from ..cluster import ClusterLease, SharedLink
    from ..cluster.renewer import Renewer
    from ..job.model import Job
    from .core import Supervisor
    from .house import Member

INF = float("inf")
HEAD = 0.5  # seconds: the house's head start on its watcher (at most half a job's room)


def head_for(timing: Timing) -> float:
    return min(HEAD, room_of(timing) / 2)


def room_of(timing: Timing) -> float:
    """From the give-up deadline to the last moment SIGKILL may go to the tree."""
    return max(0.0, timing.stop_budget() - KILL_LANDS)


def beat_of(now: float, jobs: list[tuple[Timing, float, bool, bool, float]]) -> tuple[float, float, float]:
    """(W, g, next switch) for jobs given as (timing, G, holding, tree may live, grace)."""
    deadline, switch = INF, INF
    limits: list[tuple[float, float]] = []
    for timing, give_up, holding, tree, grace in jobs:
        if not holding and not (tree and give_up > 0):
            continue
        last = give_up + room_of(timing)  # K: SIGKILL by then
        if holding and now < give_up:
            when, within = give_up + timing.head, timing.capped_grace(grace)
            switch = min(switch, give_up)
        else:
            when, within = last, 0.0
        deadline = min(deadline, when)
        limits.append((last, within))
    if not limits:
        return INF, min((t.capped_grace(g) for t, _, _, _, g in jobs), default=0.0), INF
    grace = min(min(within, last - deadline) for last, within in limits)
    return deadline, max(0.0, grace), switch


class ClusterDuty:
    """The cluster house's part in House: each job's lease engine, and the beats to the watcher."""

    def __init__(self, members: dict[str, Member], send: Callable[[float, float], None],
                 clock: Callable[[], float] = boottime, engine: Optional[Callable[[Job], ClusterLease]] = None,
                 beside: bool = True) -> None:
        self.members = members  # the house's: a job no longer there is no longer beaten for
        self.send = send
        self.clock = clock  # the leases' clock (CLOCK_BOOTTIME; the fake world's in tests)
        self.engine = engine or self.shared_engine  # tests: engines of their own (a fake database)
        self.links: dict[str, SharedLink] = {}  # by database URL: one connection each
        self.renewers: dict[SharedLink, Renewer] = {}  # by link: one renew thread each
        self.beside = beside  # the gates' round trips in threads of their own (False: inline, tests)
        self.sups: dict[str, Supervisor] = {}
        self.lock = _thread.allocate_lock()  # one beat at a time: the loop's and the renew threads'
        self.said: Optional[tuple[float, float]] = None
        self.switch_at = INF  # the next G: the loop wakes then to beat the second line
        self.sent: list[tuple[float, float, float]] = []  # (when, W, g): the last few, for status and tests

    def cluster_for(self, job: Job) -> ClusterLease:
        return self.engine(job)

    def shared_engine(self, job: Job) -> ClusterLease:
        """JOB's lease engine over the house's one connection to its database (opened at the first ask)."""
        from ..cluster.engines import open_link

        timing = Timing.for_lease(job.lease)
        link = self.links.get(job.cluster)
        if link is None:
            link = self.links[job.cluster] = open_link(job.cluster, timing)
        return link.lease_for(timing)

    def join(self, sup: Supervisor) -> None:
        """A cluster job taken: its guard waits for nothing in the loop, its grant is renewed with
        the others on its database, its deadlines beat."""
        guard = sup.guard
        assert guard is not None
        guard.timing = guard.keeper.timing = replace(guard.timing, head=head_for(guard.timing))
        guard.patient = False
        guard.beside = self.beside
        guard.keeper.on_deadline = lambda deadline: self.beat()
        link: Optional[SharedLink] = getattr(guard.cluster, "link", None)
        if link is not None:
            guard.together = self.renewer_for(link, guard.clock, guard.threaded)
        with self.lock:
            self.sups[sup.job.name] = sup
        self.beat()

    def renewer_for(self, link: SharedLink, clock: Callable[[], float], threaded: bool) -> Renewer:
        from ..cluster.renewer import Renewer

        renewer = self.renewers.get(link)
        if renewer is None:
            renewer = self.renewers[link] = Renewer(link, clock, threaded, told=self.beat)
        return renewer

    def wrap(self, wait: Callable[[float], None]) -> Callable[[float], None]:
        """The house's wait (its loop's, and a stop's pauses): never past the next give-up
        deadline, and a beat before and after each (one write only when it changed)."""
        def waiting(timeout: float) -> None:
            self.beat()
            wait(max(0.0, min(timeout, self.switch_at - self.clock())))
            self.beat()
        return waiting

    def beat(self) -> None:
        with self.lock:
            now = self.clock()
            jobs = []
            for name, sup in list(self.sups.items()):
                member = self.members.get(name)
                if member is None or member.sup is not sup:
                    del self.sups[name]  # it left the house: its tree is gone, its lease given back
                    continue
                guard = sup.guard
                assert guard is not None
                keeper = guard.keeper
                jobs.append((guard.timing, keeper.give_up_at, keeper.grant is not None and not keeper.lost(now),
                             sup.life.child.pid is not None or keeper.grant is not None, sup.job.grace))
            deadline, grace, self.switch_at = beat_of(now, jobs)
            if (deadline, grace) == self.said:
                return
            self.said = (deadline, grace)
            self.sent = [*self.sent[-9:], (now, deadline, grace)]
            self.send(deadline, grace)


def watcher_log(root: str) -> str:
    """Where the cluster house's watcher writes what it did (the jobs' logs are the house's)."""
    import os

    from .. import paths
    from ..files import ensure_dir

    folder = paths.default_log_dir(root)
    ensure_dir(folder)
    return os.path.join(folder, "cluster-house.log")
