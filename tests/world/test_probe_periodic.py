"""--every's due times under floating point, found by a real `--every 5 --timeout 2` job whose
log said at each run `the run outlasted its period: 100000 due time(s) skipped`: the anchor is
a monotonic time with a fraction, and anchor + n * period, taken back through `//`, can fall
just short of n, so `next_after(due)` gave `due` itself."""

from __future__ import annotations

import random
from typing import Any

import pytest
from fakeworld import FakeWorld, log_of
from test_periodic import periodic, runs_for

from watchdog_singleton.job.schedule import EverySchedule, skipped_between

PERIODS = (0.1, 1.0, 3.0, 5.0, 6.0, 7.5, 20.0, 86400.0)


def _due_times(count: int) -> list[tuple[EverySchedule, float]]:
    rng = random.Random(1)
    found = []
    for _ in range(count):
        schedule = EverySchedule(rng.choice(PERIODS), rng.uniform(1000.0, 2e6))
        found.append((schedule, schedule.next_after(schedule.anchor + rng.uniform(0.0, 1e5))))
    return found


def test_the_next_due_time_is_always_later() -> None:
    for schedule, due in _due_times(3000):
        assert schedule.next_after(due) > due, (schedule.anchor, schedule.period, due)
        previous = schedule.previous_at_or_before(due)
        assert previous is not None and previous <= due < schedule.next_after(previous)
        assert skipped_between(schedule, due, due + schedule.period / 2) == 0


@pytest.mark.parametrize("start", [1878359.1763942426, 51866.27612592814, 8712.3])
def test_a_job_on_a_real_hosts_fractional_monotonic_clock_skips_nothing_and_loops(tmp_path: Any, start: float) -> None:
    """The supervisor, in a fake world whose monotonic clock reads like a real host's: a run
    that times out within its period skips nothing, and a loop job still reruns within its slot."""
    world = FakeWorld()
    world.now = start
    sup = periodic(tmp_path / "timeout", world, every=0.1 if start > 1e6 else 5.0, timeout=0.04 if start > 1e6 else 2.0)
    runs_for(world, 1000.0)
    world.at(world.now + 60, sup.request_stop)
    sup.run()
    assert sup.state.runs >= 10 and sup.state.timeouts >= sup.state.runs - 1
    assert sup.state.skipped == 0 and "skipped" not in log_of(sup), log_of(sup)[-500:]

    world = FakeWorld()
    world.now = start
    sup = periodic(tmp_path / "loop", world, every=6.0, loop=True)
    runs_for(world, 2.0)
    world.at(world.now + 60, sup.request_stop)
    sup.run()
    assert len(world.spawned) >= 28, "back to back: it never idles"
    assert sup.state.skipped == 0
