"""Periodic jobs and daemon lifetimes, driven through the supervisor's seams (tests/kits/fakeworld.py):
due times, skipped slots, timeouts, jitter, loop mode, catch-up, --max-lifetime. Simulated time."""

from __future__ import annotations

import os
from typing import Any, Optional

import pytest
from fakeworld import T0, TERM, FakeLock, FakeProc, FakeWorld, births, log_of

from watchdog_singleton.job.model import Job
from watchdog_singleton.job.schedule import CronSchedule, EverySchedule, skipped_between
from watchdog_singleton.state.store import RunState, StateStore
from watchdog_singleton.supervisor.core import Supervisor


def periodic(tmp_path: Any, world: FakeWorld, history: Optional[dict[str, Any]] = None, **options: Any) -> Supervisor:
    logs = os.path.join(str(tmp_path), "logs")
    options.setdefault("periodic", True)
    job = Job(name="p", command=["/bin/job"], workdir="/", lock_dir=os.path.join(str(tmp_path), "locks"),
              stdout_log=os.path.join(logs, "p.out"), stderr_log=os.path.join(logs, "p.err"), **options)
    return Supervisor(job, FakeLock(), StateStore(os.path.join(str(tmp_path), "state")),
                      seams=world.seams(), history=history)


def runs_for(world: FakeWorld, seconds: float, code: int = 0) -> None:
    def on_spawn(proc: FakeProc) -> None:
        world.after(seconds, lambda: world.exit(proc.pid, code))
    world.on_spawn = on_spawn


def test_every_runs_start_to_start_and_never_overlap(tmp_path: Any) -> None:
    world = FakeWorld()
    sup = periodic(tmp_path, world, every=5.0)
    runs_for(world, 1.0)
    world.at(T0 + 22, sup.request_stop)
    sup.run()
    assert births(world) == [0.0, 5.0, 10.0, 15.0, 20.0]
    assert sup.state.runs == 5 and sup.state.failures == 0 and sup.state.last_result == "ok"


def test_a_run_that_outlasts_its_period_is_followed_at_once_and_skips_only_the_slots_passed_over(
        tmp_path: Any) -> None:
    world = FakeWorld()
    sup = periodic(tmp_path, world, every=5.0, timeout=100.0)
    runs_for(world, 12.0)
    world.at(T0 + 13, sup.request_stop)
    sup.run()
    # The run due at 0 ends at 12: the slot at 10 starts at once, late; only the one at 5 was passed over.
    assert births(world) == [0.0, 12.0], "never joined by a second run, and the next one starts at once"
    assert sup.state.skipped == 1
    assert [h["result"] for h in sup.state.history] == ["ok", "skipped", "stopped"]
    assert [h["due"][-10:-5] for h in sup.state.history] == ["16:40", "16:45", "16:50"]  # T0 = 1000 s
    assert sup.state.history[2]["late"] == pytest.approx(2.0)
    assert sup.state.failures == 0, "a run ended by `stop` is no failure"
    assert "the run outlasted its period: 1 due time(s) skipped" in log_of(sup)


def test_a_loop_job_with_a_2_s_run_and_a_6_s_period_never_idles_and_never_skips(tmp_path: Any) -> None:
    for seconds in (2.0, 2.1):
        world = FakeWorld()
        sup = periodic(tmp_path / str(seconds), world, every=6.0, loop=True)
        runs_for(world, seconds)
        world.at(T0 + 60, sup.request_stop)
        sup.run()
        assert births(world) == pytest.approx([seconds * i for i in range(len(world.spawned))], abs=1e-6)
        assert len(world.spawned) >= 28, "back to back: it never idles"
        assert sup.state.skipped == 0 and "skipped" not in log_of(sup)
        assert all(h["result"] != "skipped" for h in sup.state.history)
        assert "late" not in log_of(sup), "no warning every period"


def test_an_every_job_is_not_stalled_by_a_backward_step_of_the_wall_clock(tmp_path: Any) -> None:
    world = FakeWorld()
    sup = periodic(tmp_path, world, every=5.0)
    runs_for(world, 1.0)
    world.at(T0 + 12, lambda: world.step_wall(-600.0))
    world.at(T0 + 31, sup.request_stop)
    sup.run()
    assert births(world) == [0.0, 5.0, 10.0, 15.0, 20.0, 25.0, 30.0]
    assert sup.state.skipped == 0
    assert sup.periodic is not None
    assert sup.state.history[-1]["due"] == sup.periodic.runs.when(T0 + 30)  # shown on the wall clock, stepped
    assert sup.state.last_due == pytest.approx(T0 + 30 - 600)


def test_a_forward_step_of_the_wall_clock_neither_hurries_nor_skips_an_every_job(tmp_path: Any) -> None:
    world = FakeWorld()
    sup = periodic(tmp_path, world, every=5.0)
    runs_for(world, 1.0)
    world.at(T0 + 7, lambda: world.step_wall(3600.0))
    world.at(T0 + 21, sup.request_stop)
    sup.run()
    assert births(world) == [0.0, 5.0, 10.0, 15.0, 20.0]
    assert sup.state.skipped == 0


def test_a_run_late_by_more_than_half_a_long_period_gets_pandas_warning(tmp_path: Any) -> None:
    world = FakeWorld()
    sup = periodic(tmp_path, world, every=3600.0, timeout=20000.0)
    runs_for(world, 5500.0)
    world.at(T0 + 5600, sup.request_stop)
    sup.run()
    assert births(world) == [0.0, 5500.0]
    assert sup.state.skipped == 0, "the slot at 3600 runs, late: none was passed over"
    assert sup.state.history[-1]["late"] == pytest.approx(1900.0)
    assert "starts 1900 s late" in log_of(sup)


def test_a_timeout_stops_the_runs_whole_tree(tmp_path: Any) -> None:
    world = FakeWorld()
    sup = periodic(tmp_path, world, every=60.0, timeout=10.0, grace=2.0)
    grandchild: list[FakeProc] = []

    def hangs_with_a_setsid_grandchild(proc: FakeProc) -> None:
        proc.ignores_term = True
        grandchild.append(world.fork(proc.pid))
    world.on_spawn = hangs_with_a_setsid_grandchild
    world.at(T0 + 30, sup.request_stop)
    sup.run()
    assert TERM in grandchild[0].signals and grandchild[0].pid not in world.procs
    assert world.live(sup.job.lock_path) == []
    assert sup.state.timeouts == 1 and sup.state.history[0]["result"] == "timed out"
    assert sup.state.history[0]["duration"] == pytest.approx(12.0, abs=0.1)  # timeout + grace, then SIGKILL
    log = log_of(sup)
    assert log.count("run timed out after 10 s") == 1, "a timeout is logged once"
    assert "run timed out after 10 s; SIGTERM to 2 process(es), SIGKILL after 2 s" in log
    assert f"pid {world.spawned[0].pid} was killed by SIGKILL after 12.0 s" in log and "pid None" not in log


def test_the_default_timeout_is_pandas() -> None:
    every = Job(name="x", command=["/x"], workdir="/", periodic=True, every=240.0)
    assert every.run_timeout == 720.0  # min(period * 3, period + 3600)
    hourly = Job(name="x", command=["/x"], workdir="/", periodic=True, every=7200.0)
    assert hourly.run_timeout == 7200.0 + 3600.0


def test_jitter_delays_each_run_by_a_fresh_amount_never_early(tmp_path: Any) -> None:
    world = FakeWorld()
    sup = periodic(tmp_path, world, every=10.0, jitter=3.0)
    runs_for(world, 0.5)
    world.at(T0 + 100, sup.request_stop)
    sup.run()
    delays = [b - 10.0 * i for i, b in enumerate(births(world)[1:], start=1)]
    assert len(delays) >= 8
    assert all(0.0 <= d <= 3.0 for d in delays), delays
    assert len({round(d, 3) for d in delays}) > 1, "the jitter is drawn afresh for each run"


def test_loop_mode_reruns_while_it_succeeds_and_goes_on_into_the_next_period(tmp_path: Any) -> None:
    world = FakeWorld()
    sup = periodic(tmp_path, world, every=10.0, loop=True)
    runs_for(world, 3.0)
    world.at(T0 + 22, sup.request_stop)
    sup.run()
    # Reruns at 3, 6 and 9; the one from 9 ends in the next period, whose run starts at once (late).
    assert births(world) == [0.0, 3.0, 6.0, 9.0, 12.0, 15.0, 18.0, 21.0]
    assert [(h["result"], h.get("loops"), h.get("late")) for h in sup.state.history] == [
        ("ok", 4, None), ("ok", 3, 2.0), ("stopped", None, 1.0)]
    assert sup.state.skipped == 0


def test_loop_mode_stops_rerunning_on_a_failure_and_waits_for_the_next_due_time(tmp_path: Any) -> None:
    world = FakeWorld()
    sup = periodic(tmp_path, world, every=10.0, loop=True)
    runs_for(world, 3.0, code=1)
    world.at(T0 + 15, sup.request_stop)
    sup.run()
    assert births(world) == [0.0, 10.0]


def test_catch_up_once_makes_up_one_missed_due_time_at_start(tmp_path: Any) -> None:
    world = FakeWorld()
    sup = periodic(tmp_path, world, every=60.0, catch_up="once", history={"last_due": T0 - 600.0})
    runs_for(world, 1.0)
    world.at(T0 + 30, sup.request_stop)
    sup.run()
    assert births(world) == [0.0]
    assert "one make-up run now" in log_of(sup)


def test_without_catch_up_a_missed_due_time_is_not_made_up(tmp_path: Any) -> None:
    world = FakeWorld()
    sup = periodic(tmp_path, world, every=60.0, history={"last_due": T0 - 590.0})
    runs_for(world, 1.0)
    world.at(T0 + 70, sup.request_stop)
    sup.run()
    assert births(world) == [pytest.approx(10.0)]  # the next slot of the old cadence, not at once


def test_a_cron_fired_run_runs_its_slot_once_and_exits_with_its_code(tmp_path: Any) -> None:
    world = FakeWorld()
    sup = periodic(tmp_path, world, schedule="* * * * *")
    runs_for(world, 2.0, code=3)
    assert sup.run() == 3
    assert len(world.spawned) == 1
    assert sup.state.runs == 1 and sup.state.failures == 1 and sup.state.last_result == "failed (3)"


def test_max_lifetime_restarts_a_daemon_gracefully(tmp_path: Any) -> None:
    world = FakeWorld()
    sup = periodic(tmp_path, world, periodic=False, max_lifetime=100.0, grace=5.0)
    world.at(T0 + 250, sup.request_stop)
    sup.run()
    assert births(world) == pytest.approx([0.0, 100.0, 200.0], abs=0.05)
    first = world.spawned[0]
    assert first.signals[0] == TERM, "SIGTERM first, so it can checkpoint"
    assert "--max-lifetime 100 s reached" in log_of(sup)


def test_history_carries_over_to_the_next_supervisor(tmp_path: Any) -> None:
    world = FakeWorld()
    previous = RunState(name="p", runs=7, failures=2, history=[{"due": "x", "result": "ok"}])
    sup = periodic(tmp_path, world, schedule="* * * * *",
                   history={k: getattr(previous, k) for k in ("runs", "failures", "history")})
    runs_for(world, 1.0)
    sup.run()
    assert sup.state.runs == 8 and len(sup.state.history) == 2


def test_cron_schedules_compute_due_times_and_skips() -> None:
    every4 = CronSchedule("*/4 * * * *")
    t = every4.next_after(1_700_000_000)
    assert t % 240 == 0 and every4.next_after(t) == t + 240
    assert skipped_between(every4, t, t + 600) == 2
    assert CronSchedule("0 0 * * *").next_after(t) - t <= 86400
    assert EverySchedule(5, anchor=100).next_after(112) == 115
    with pytest.raises(ValueError):
        CronSchedule("61 * * * *")


def test_sigusr2_takes_new_settings_without_a_restart(tmp_path: Any) -> None:
    world = FakeWorld()
    sup = periodic(tmp_path, world, every=10.0)
    runs_for(world, 1.0)
    store_root = os.path.join(str(tmp_path), "state")
    from watchdog_singleton.job.model import JobStore

    def change_the_period() -> None:
        new = Job.from_dict(sup.job.to_dict())
        new.every = 3.0
        JobStore(store_root).save(new)
        sup.wakeups.signals.append(12)  # SIGUSR2, as install and apply send it

    world.at(T0 + 12, change_the_period)
    world.at(T0 + 20, sup.request_stop)
    sup.run()
    assert births(world)[:2] == [0.0, 10.0]
    assert births(world)[2] == pytest.approx(13.0, abs=0.01)  # the new period, counted from the last start
    assert len(world.spawned) >= 4 and "re-read its definition" in log_of(sup)
