"""The supervisor's decisions (supervisor_decisions) and its phase table (phases), by plain calls:
no supervisor, no loop, no processes. What happened goes in, what to do comes out."""

from __future__ import annotations

from typing import Any

import pytest
from fakeworld import FakeDatabase, FakeWorld, supervisor

from watchdog_singleton.cluster import Timing
from watchdog_singleton.cluster.guard import ClusterGuard
from watchdog_singleton.job.model import Job
from watchdog_singleton.state.phases import NEXT, Phase, allowed
from watchdog_singleton.state.store import RunState
from watchdog_singleton.supervisor.decisions import Done, Go, NextDue, RestartAt, RestartPolicy, Standby
from watchdog_singleton.supervisor.lease_gate import LeaseGate
from watchdog_singleton.supervisor.periodic import PeriodicRuns
from watchdog_singleton.supervisor.periodic_plan import PeriodicPlan


def job(**options: Any) -> Job:
    return Job(name="j", command=["/bin/j"], workdir="/", **options)


# -- restarts ----------------------------------------------------------------------------------
def test_restart_policy_restarts_quick_exits_at_once_then_backs_off_doubling_up_to_the_cap() -> None:
    policy = RestartPolicy(job(backoff_initial=1.0, backoff_max=4.0))
    decisions = [policy.after_exit(1, lasted=0.1, now=100.0) for _ in range(6)]
    assert decisions == [RestartAt(100.0, 0.0, 1), RestartAt(100.0, 0.0, 2), RestartAt(101.0, 1.0, 3),
                         RestartAt(102.0, 2.0, 4), RestartAt(104.0, 4.0, 5), RestartAt(104.0, 4.0, 6)]


def test_restart_policy_forgets_quick_exits_after_a_run_that_lasted() -> None:
    policy = RestartPolicy(job(min_uptime=5.0))
    for _ in range(4):
        policy.after_exit(1, lasted=0.5, now=0.0)
    assert policy.after_exit(1, lasted=6.0, now=50.0) == RestartAt(50.0, 0.0, 0)


def test_restart_policy_never_counts_a_run_ended_at_its_max_lifetime_as_quick() -> None:
    policy = RestartPolicy(job(min_uptime=5.0))
    assert [policy.after_exit(0, 0.1, 0.0, lifetime=True).quick_runs for _ in range(5)] == [0] * 5


@pytest.mark.parametrize(("restart", "code", "expected"), [
    ("never", 0, Done(0)), ("never", 3, Done(3)), ("on-failure", 0, Done(0)),
    ("on-failure", 3, RestartAt(10.0, 0.0, 1)), ("always", 0, RestartAt(10.0, 0.0, 1)),
])
def test_restart_policy_follows_restart_option(restart: str, code: int, expected: object) -> None:
    assert RestartPolicy(job(restart=restart)).after_exit(code, lasted=0.1, now=10.0) == expected


def test_restart_policy_is_done_while_a_stop_is_under_way() -> None:
    assert RestartPolicy(job(restart="always")).after_exit(-15, 3.0, 10.0, stopping=True) == Done(-15)


# -- periodic runs -----------------------------------------------------------------------------
class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def plan_for(clock: Clock, **options: Any) -> PeriodicPlan:
    j = job(periodic=True, **options)
    return PeriodicPlan(PeriodicRuns(j, RunState(name="j"), clock, clock))


def started(plan: PeriodicPlan, due: float) -> None:
    assert plan.delay_to(due) == 0.0
    assert plan.on_start(pid=7) is True


def test_periodic_plan_after_a_run_within_its_period_says_the_next_due_time() -> None:
    clock = Clock()
    plan = plan_for(clock, every=10.0)
    due = plan.runs.first_due()
    started(plan, due)
    assert plan.notes == [f"run due {plan.runs.when(due)} started (pid 7)"]
    clock.now += 3
    assert not plan.again(0, timed_out=False, stopping=False, loop=False)
    assert plan.after_run(0, timed_out=False, stopping=False) == NextDue(due + 10)
    assert plan.event == "" and plan.notes == [f"run due {plan.runs.when(due)}: ok"]
    assert plan.runs.state.runs == 1 and plan.runs.state.last_result == "ok"


def test_periodic_plan_after_an_overrun_starts_the_latest_due_time_at_once_and_counts_the_skipped() -> None:
    clock = Clock()
    plan = plan_for(clock, every=10.0)
    due = plan.runs.first_due()
    started(plan, due)
    clock.now += 35  # due + 10, + 20 and + 30 passed meanwhile: + 30 runs next, late
    assert plan.after_run(1, timed_out=False, stopping=False) == NextDue(due + 30)
    assert plan.notes[0] == "the run outlasted its period: 2 due time(s) skipped"
    assert plan.runs.state.skipped == 2 and plan.runs.state.failures == 1
    assert plan.delay_to(due + 30) == 0.0, "due already: at once, no jitter"


def test_periodic_plan_in_loop_mode_runs_again_within_the_period_and_not_after_a_failure() -> None:
    clock = Clock()
    plan = plan_for(clock, every=10.0, loop=True)
    started(plan, plan.runs.first_due())
    clock.now += 2
    assert plan.again(0, timed_out=False, stopping=False, loop=True)
    assert not plan.again(1, timed_out=False, stopping=False, loop=True)
    assert not plan.again(0, timed_out=False, stopping=True, loop=True)


def test_periodic_plan_of_a_run_cron_fires_is_done_after_it_with_timeouts_code_124() -> None:
    clock = Clock()
    plan = plan_for(clock, schedule="* * * * *")
    started(plan, plan.runs.first_due())
    clock.now += 70
    assert plan.after_run(0, timed_out=True, stopping=False) == Done(124)
    assert plan.event == "run-timeout" and plan.runs.state.timeouts == 1


def test_periodic_plan_is_done_when_stopped_mid_run() -> None:
    clock = Clock()
    plan = plan_for(clock, every=10.0)
    started(plan, plan.runs.first_due())
    assert plan.after_run(-15, timed_out=False, stopping=True) == Done(-15)
    assert plan.runs.state.last_result == "stopped"


# -- the cluster lease -------------------------------------------------------------------------
def gate_for(world: FakeWorld, db: FakeDatabase, host: str, **options: Any) -> LeaseGate:
    j = job(cluster="postgresql://u@db/ws", lease=60.0, **options)
    guard = ClusterGuard(j, db.host(host, 60.0), Timing.for_lease(60.0), lambda: None, clock=lambda: world.now,
                         threaded=False)
    return LeaseGate(j, RunState(name="j"), guard)


def test_lease_gate_says_go_to_the_first_host_and_standby_or_leave_to_the_second() -> None:
    world = FakeWorld()
    db = FakeDatabase(world)
    a = gate_for(world, db, "a")
    assert a.before_start(world.now, "now", None, stopping=False) == Go()
    assert a.state.lease_role == "holder" and a.state.lease_token == 1
    assert a.notes == ["holding the cluster lease of j: token 1"]
    b = gate_for(world, db, "b", standby=True)
    retry = b.guard.timing.retry
    assert b.before_start(world.now, "now", None, stopping=False) == \
        Standby(world.now + retry, "ok standby j: held by a: standing by")
    assert b.state.lease_role == "standby" and b.state.lease_holder == "a"
    c = gate_for(world, db, "c")
    assert c.before_start(world.now, "now", None, stopping=False) == Done(0, "ok standby j not started here: held by a")


def test_lease_gate_leaves_with_code_1_when_the_database_cannot_be_reached() -> None:
    world = FakeWorld()
    db = FakeDatabase(world)
    db.reachable = False
    gate = gate_for(world, db, "a")
    decision = gate.before_start(world.now, "now", None, stopping=False)
    assert decision.kind == "done" and decision.code == 1 and str(decision.report).startswith("unavailable")
    assert gate.state.lease_problem and gate.state.lease_checked_at is None


def test_lease_gate_of_a_periodic_job_waits_for_the_next_due_time_and_skips_a_synced_slot() -> None:
    world = FakeWorld()
    db = FakeDatabase(world)
    clock = Clock()
    clock.now = world.now
    first = gate_for(world, db, "a", periodic=True, every=30.0, sync=True)
    assert first.before_start(world.now, "now", None, stopping=False) == Go()
    first.run_ended()
    second = gate_for(world, db, "b", periodic=True, every=30.0, sync=True)
    plan = PeriodicPlan(PeriodicRuns(second.job, second.state, clock, clock))
    plan.delay_to(plan.runs.first_due())
    assert second.before_start(world.now, "now", plan, stopping=False) == NextDue(world.now + 30)
    assert second.state.skipped == 1 and second.state.history[-1]["result"] == "skipped"


def test_lease_gate_tick_says_once_when_the_lease_is_lost() -> None:
    world = FakeWorld()
    db = FakeDatabase(world)
    gate = gate_for(world, db, "a")
    assert gate.before_start(world.now, "now", None, stopping=False) == Go()
    assert gate.on_tick().lost is None
    db.reachable = False
    world.now += 120  # past the give-up deadline
    news = gate.on_tick()
    assert (news.lost or "").startswith("lost the cluster lease of j (")
    assert gate.state.lease_role == "" and gate.state.lease_token is None
    assert gate.on_tick().lost is None, "said once"


# -- phases ------------------------------------------------------------------------------------
def test_phase_table_names_only_phases_and_ends_in_stopped() -> None:
    names = {v for k, v in vars(Phase).items() if k.isupper()}
    assert set(NEXT) == names and all(set(targets) <= names for targets in NEXT.values())
    assert NEXT[Phase.STOPPED] == ()
    assert allowed(Phase.RUNNING, Phase.RUNNING) and allowed(Phase.RUNNING, Phase.BACKOFF)
    assert not allowed(Phase.STOPPED, Phase.RUNNING) and not allowed(Phase.BACKOFF, Phase.RUNNING)


def test_the_one_phase_change_refuses_a_step_the_table_does_not_allow_and_saves_each(tmp_path: Any) -> None:
    world = FakeWorld()
    sup = supervisor(tmp_path, world)
    sup.life.enter(Phase.STOPPING)
    sup.life.enter(Phase.STOPPED)
    saved = sup.store.load("j")
    assert saved is not None and saved.phase == Phase.STOPPED
    with pytest.raises(AssertionError, match="stopped -> running"):
        sup.life.enter(Phase.RUNNING)  # the fake world is strict: a step out of the table is a bug
    assert sup.state.phase == Phase.STOPPED
    sup.seams.strict = False  # the resident notes it in the job's log and goes on
    sup.life.enter(Phase.RUNNING)
    assert sup.state.phase == Phase.RUNNING and "unexpected phase change: stopped -> running" in sup.output._early[-1]
