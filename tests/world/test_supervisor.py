"""The supervisor's lifecycle driven through its seams: a fake clock and a fake process table
(tests/kits/fakeworld.py). No processes, no root, no sleeps; every time below is simulated."""

from __future__ import annotations

import os
from typing import Any, Optional

import pytest
from fakeworld import SUPERVISOR, T0, TERM, FakeProc, FakeWorld, births, exit_after, log_of, supervisor

from watchdog_singleton.proc.spawn import SpawnError
from watchdog_singleton.state.store import RunState, StateStore
from watchdog_singleton.supervisor.core import Supervisor
from watchdog_singleton.supervisor.lockwatch import CHECK_SECONDS, TAKEN_RECHECK


class FlakyStore(StateStore):
    """A state folder on a disk that fills up and empties again."""

    broken = False

    def save(self, state: RunState) -> bool:
        if self.broken:
            self.last_error = "No space left on device"
            return False
        super().save(state)
        return True


def test_kill_9_of_a_daemon_that_ran_3_s_restarts_it_at_once(tmp_path: Any) -> None:
    world = FakeWorld()
    sup = supervisor(tmp_path, world)
    world.at(T0 + 3, lambda: world.exit(world.spawned[0].pid, -9))
    world.at(T0 + 10, sup.request_stop)
    assert sup.run() == 128 + TERM  # stopped by SIGTERM: the daemon's story, as a shell tells it
    assert births(world) == [0.0, 3.0]
    assert sup.state.restarts == 1 and sup.state.phase == "stopped"


def test_three_quick_exits_restart_at_once_then_the_backoff_doubles(tmp_path: Any) -> None:
    world = FakeWorld()
    sup = supervisor(tmp_path, world, backoff_initial=1.0, backoff_max=60.0)
    exit_after(world, 0.1, 3)
    world.at(T0 + 10, sup.request_stop)
    sup.run()
    assert births(world) == pytest.approx([0.0, 0.1, 0.2, 1.3, 3.4, 7.5])
    assert "3 runs shorter than 1 s in a row" in log_of(sup)


def test_backoff_state_is_shown_while_waiting(tmp_path: Any) -> None:
    world = FakeWorld()
    sup = supervisor(tmp_path, world, backoff_initial=5.0)
    exit_after(world, 0.1, 3)
    seen: list[tuple[str, float]] = []
    world.at(T0 + 2, lambda: seen.append((sup.state.phase, sup.state.backoff_seconds)))
    world.at(T0 + 3, sup.request_stop)
    sup.run()
    assert seen == [("backoff", 5.0)]
    assert "quick exits in a row" in (sup.state.message or "") or sup.state.phase == "stopped"


def test_a_leftover_forked_during_the_grace_wait_is_stopped_before_the_next_copy(tmp_path: Any) -> None:
    world = FakeWorld()
    sup = supervisor(tmp_path, world, grace=2.0)
    late: list[FakeProc] = []

    def daemon_leaves_a_stray(proc: FakeProc) -> None:
        if len(world.spawned) > 1:
            return

        def go() -> None:
            stray = world.fork(proc.pid)
            stray.ignores_term = True  # trap "" TERM; sleep 0.5; sleep 1003 &
            world.after(0.5, lambda: late.append(world.fork(stray.pid)))
            world.exit(proc.pid, 0)
        world.after(1.0, go)

    world.on_spawn = daemon_leaves_a_stray
    world.at(T0 + 8, sup.request_stop)
    sup.run()
    assert len(world.spawned) == 2
    assert world.tree_at_spawn[1] == [], "the next copy started while the old tree lived"
    assert late and TERM in late[0].signals, "the late child was never signalled"
    assert births(world)[1] == pytest.approx(3.0, abs=0.05)  # exit at 1 s + 2 s grace, then at once
    assert world.live(sup.job.lock_path) == []


def test_exit_0_leaving_processes_gets_a_hint_without_forking(tmp_path: Any) -> None:
    world = FakeWorld()
    sup = supervisor(tmp_path, world, grace=1.0)

    def backgrounds_itself(proc: FakeProc) -> None:
        if len(world.spawned) == 1:
            def go() -> None:
                world.fork(proc.pid)
                world.fork(proc.pid)
                world.exit(proc.pid, 0)
            world.after(0.2, go)
    world.on_spawn = backgrounds_itself
    messages: list[str] = []
    world.at(T0 + 0.5, lambda: messages.append(sup.state.message))
    world.at(T0 + 2, sup.request_stop)
    sup.run()
    hint = ("exited 0 leaving 2 processes: if it daemonizes itself, install it with --forking "
            "or run it in the foreground")
    assert messages == [hint]
    assert hint in log_of(sup)


def test_forking_follows_the_tree_it_leaves_and_restarts_only_when_all_of_it_is_gone(tmp_path: Any) -> None:
    world = FakeWorld()
    sup = supervisor(tmp_path, world, forking=True)
    kept: list[FakeProc] = []

    def double_fork(proc: FakeProc) -> None:
        if len(world.spawned) == 1:
            def go() -> None:
                main = world.fork(proc.pid)
                kept.append(main)
                world.fork(main.pid)  # a worker of the daemon
                world.exit(proc.pid, 0)
            world.after(0.5, go)
    world.on_spawn = double_fork
    followed: list[Optional[int]] = []
    world.at(T0 + 2, lambda: followed.append(sup.state.pid))
    world.at(T0 + 3, lambda: world.exit(kept[0].pid, -9))  # its main process dies; the worker lives on
    world.at(T0 + 4, lambda: followed.append(sup.state.pid))

    def kill_the_tree() -> None:
        for pid in world.live(sup.job.lock_path):
            world.exit(pid, -9)
    world.at(T0 + 5, kill_the_tree)
    world.at(T0 + 9, sup.request_stop)
    sup.run()
    worker = kept[0].pid + 1
    assert followed == [kept[0].pid, worker]
    assert births(world) == [0.0, 5.0], "restarted only once the whole tree was gone"


def test_stop_never_signals_a_job_started_from_inside_this_tree(tmp_path: Any) -> None:
    world = FakeWorld()
    sup = supervisor(tmp_path, world, grace=1.0)
    other: list[FakeProc] = []

    def start_a_terminal(proc: FakeProc) -> None:
        def go() -> None:
            shell = world.fork(proc.pid)
            other.append(world.fork(shell.pid, token="/tmp/watchdog-singleton-1/B.lock"))  # job B's supervisor
            other.append(world.fork(other[0].pid))  # and B's daemon below it
        world.after(0.1, go)
    world.on_spawn = start_a_terminal
    world.at(T0 + 2, sup.request_stop)
    sup.run()
    assert all(p.signals == [] for p in other)
    assert all(p.pid in world.procs for p in other)
    assert world.live(sup.job.lock_path) == []


def test_stop_kills_a_term_ignoring_daemon_after_the_grace(tmp_path: Any) -> None:
    world = FakeWorld()
    sup = supervisor(tmp_path, world, grace=3.0)
    world.on_spawn = lambda proc: setattr(proc, "ignores_term", True)
    world.at(T0 + 1, sup.request_stop)
    sup.run()
    assert world.now - T0 == pytest.approx(4.0, abs=0.05)
    assert world.live(sup.job.lock_path) == []
    assert sup.state.phase == "stopped"


def test_a_full_state_disk_never_stops_the_supervisor_and_the_state_heals(tmp_path: Any) -> None:
    world = FakeWorld()
    store = FlakyStore(os.path.join(str(tmp_path), "state"))
    sup = supervisor(tmp_path, world, store=store)
    world.at(T0 + 1, lambda: setattr(store, "broken", True))
    world.at(T0 + 2, lambda: world.exit(world.spawned[0].pid, -9))
    world.at(T0 + 4, lambda: setattr(store, "broken", False))
    world.at(T0 + 12, sup.request_stop)
    world.at(T0 + 11, lambda: snapshot.append(store.load("j")))
    snapshot: list[Optional[RunState]] = []
    sup.run()
    assert births(world) == [0.0, 2.0], "the daemon was restarted while the disk was full"
    [state] = snapshot
    assert state is not None and state.pid == world.spawned[1].pid and state.restarts == 1
    log = log_of(sup)
    assert "cannot write the state file: No space left on device" in log
    assert "the state file is written again" in log


def test_readiness_reports_a_daemon_that_died_within_the_settle_time(tmp_path: Any) -> None:
    world = FakeWorld()
    ready: list[Optional[str]] = []
    sup = supervisor(tmp_path, world, ready=ready, restart="never")
    exit_after(world, 0.3, 1)
    sup.run()
    assert len(ready) == 1 and ready[0] is not None
    assert ready[0].startswith("j exited with code 1 0.3 s after it started; see ")


def test_readiness_is_reported_once_the_daemon_outlived_the_settle_time(tmp_path: Any) -> None:
    world = FakeWorld()
    ready: list[Optional[str]] = []
    sup = supervisor(tmp_path, world, ready=ready, settle=1.5)
    when: list[float] = []
    world.at(T0 + 1.4, lambda: when.append(len(ready)))
    world.at(T0 + 5, sup.request_stop)
    sup.run()
    assert ready == [None] and when == [0]


def test_a_command_that_cannot_start_is_reported_and_backs_off(tmp_path: Any) -> None:
    world = FakeWorld()
    world.spawn_error = SpawnError("cannot start /bin/daemon: No such file or directory", 127)
    ready: list[Optional[str]] = []
    sup = supervisor(tmp_path, world, ready=ready, backoff_initial=1.0)
    world.at(T0 + 5, sup.request_stop)
    sup.run()
    assert ready == ["cannot start /bin/daemon: No such file or directory"]
    assert len(world.tree_at_spawn) == 5  # tried at t = 0, 0, 0 (the burst), 1, 3 (backoff 1, 2, then 4 s)
    assert sup.state.last_exit_code == 127


def test_a_sigterm_to_the_supervisor_exits_with_the_daemons_story(tmp_path: Any) -> None:
    world = FakeWorld()
    sup = supervisor(tmp_path, world, restart="never")
    exit_after(world, 1.0, -9)
    assert sup.run() == 128 + 9  # killed by signal 9: 128+9, as shells report it
    assert SUPERVISOR not in world.procs


def test_a_stop_does_not_end_on_one_empty_scan_a_fork_and_exit_can_hide_in() -> None:
    """/proc is not read atomically: a process that forks and exits between the listing and
    the read of it leaves a scan that sees neither it nor its child."""
    from watchdog_singleton.proc.tree import Stopper

    scans = iter([{101: 1}, {}, {102: 2}, {}, {}, {}, {}, {}])
    sent: list[tuple[int, int]] = []
    now = [0.0]
    stopper = Stopper(send=lambda pid, sig: sent.append((pid, sig)), clock=lambda: now[0],
                      sleep=lambda s: now.__setitem__(0, now[0] + s))
    assert stopper.stop(lambda: next(scans), grace=5.0) == {}
    assert (102, TERM) in sent, "the child that the empty scan hid was never signalled"


def test_a_duplicate_steps_down_stopping_its_own_daemon_and_only_that(tmp_path: Any) -> None:
    from watchdog_singleton.lock.flock import TAKEN

    world = FakeWorld()
    sup = supervisor(tmp_path, world, grace=1.0)
    lock = sup.lock
    lock.still_ours = lambda: False  # type: ignore[method-assign]
    lock.repair = lambda: TAKEN  # type: ignore[method-assign]  # another supervisor holds the path
    # The other supervisor's daemon carries the same job token, but is not below this supervisor.
    other = FakeProc(3_999_000, 1, sup.job.lock_path, ["/bin/daemon"], T0)
    world.procs[other.pid] = other
    world.at(T0 + CHECK_SECONDS + 3 * TAKEN_RECHECK, sup.request_stop)  # after the third check that finds it taken
    assert sup.run() == 0
    mine = world.spawned[0]
    assert mine.pid not in world.procs, "the duplicate's own daemon was left running"
    assert other.signals == [] and other.pid in world.procs


def test_three_kills_of_a_forking_daemon_count_three_restarts_with_last_exit_sigkill(tmp_path: Any) -> None:
    world = FakeWorld()
    sup = supervisor(tmp_path, world, forking=True)
    mains: list[FakeProc] = []

    def backgrounds_itself(proc: FakeProc) -> None:
        def go() -> None:
            mains.append(world.fork(proc.pid))  # the daemon proper, re-parented to the supervisor
            world.exit(proc.pid, 0)  # the forking parent's own exit: not the daemon's story
        world.after(0.2, go)
    world.on_spawn = backgrounds_itself
    for at in (5, 10, 15):
        world.at(T0 + at, lambda: world.exit(mains[-1].pid, -9))
    seen: list[tuple[int, Optional[int]]] = []
    world.at(T0 + 19, lambda: seen.append((sup.state.restarts, sup.state.last_exit_code)))
    world.at(T0 + 20, sup.request_stop)
    sup.run()
    assert births(world) == [0.0, 5.0, 10.0, 15.0]
    assert seen == [(3, -9)], "one death, one restart; the last exit is the tree's (SIGKILL), not the parent's 0"


def test_no_stop_restart_or_lifetime_line_says_pid_none(tmp_path: Any) -> None:
    world = FakeWorld()
    sup = supervisor(tmp_path, world, max_lifetime=10.0, grace=1.0)
    world.at(T0 + 4, lambda: world.exit(world.spawned[-1].pid, -9))  # a restart
    world.at(T0 + 20, sup.request_stop)  # after a --max-lifetime restart at 14: a stop
    sup.run()
    log = log_of(sup)
    first, second, third = (p.pid for p in world.spawned)
    assert f"pid {first} was killed by SIGKILL after 4.0 s" in log
    assert f"pid {second} was killed by SIGTERM after 10.0 s" in log
    assert f"pid {third} was killed by SIGTERM after 6.0 s" in log
    assert "None" not in log
    assert log.count("--max-lifetime 10 s reached") == 1, log


def test_the_started_line_is_shell_quoted_one_line_per_start(tmp_path: Any) -> None:
    world = FakeWorld()
    sup = supervisor(tmp_path, world)
    sup.job.command = ["/bin/daemon", "", "a b", "it's", "line1\nline2"]
    world.at(T0 + 1, sup.request_stop)
    sup.run()
    pid = world.spawned[0].pid
    assert f"started pid {pid}: /bin/daemon '' 'a b' 'it'\"'\"'s' $'line1\\nline2'\n" in log_of(sup)


def test_shell_join_reads_back_as_the_same_words() -> None:
    import subprocess

    from watchdog_singleton.quoting import shell_join

    words = ["", "a b", "it's", "x\ny\tz", "\x1b[31mred", "back\\slash", "é", "$HOME", "*"]
    line = shell_join(words)
    assert "\n" not in line and "\x1b" not in line
    out = subprocess.run(["bash", "-c", f"printf '%s\\0' {line}"], capture_output=True, check=True).stdout
    assert out.decode().split("\0")[:-1] == words


def scans_between_kill_and_restart(tmp_path: Any, setup: Any) -> tuple[int, FakeWorld, Supervisor]:
    """A daemon killed -9 at 3 s and restarted: how often /proc was scanned in between."""
    world = FakeWorld()
    sup = supervisor(tmp_path, world)
    marks: list[int] = []

    def kill() -> None:
        setup(world, world.spawned[0])
        marks.append(world.scans)
        world.exit(world.spawned[0].pid, -9)

    def on_spawn(proc: FakeProc) -> None:
        if len(world.spawned) == 2:
            marks.append(world.scans)
    world.on_spawn = on_spawn
    world.at(T0 + 3, kill)
    world.at(T0 + 10, sup.request_stop)
    sup.run()
    assert len(world.spawned) == 2 and births(world)[1] >= 3.0
    return marks[1] - marks[0], world, sup


def test_a_restart_with_no_child_left_does_not_scan_proc(tmp_path: Any) -> None:
    scans, world, sup = scans_between_kill_and_restart(tmp_path, lambda world, daemon: None)
    assert scans == 0
    assert births(world) == [0.0, 3.0]
    assert world.tree_at_spawn[1] == []


def test_a_restart_with_a_leftover_scans_and_stops_it_first(tmp_path: Any) -> None:
    strays: list[FakeProc] = []
    scans, world, sup = scans_between_kill_and_restart(
        tmp_path, lambda world, daemon: strays.append(world.fork(world.fork(daemon.pid).pid, token=None)))
    assert scans > 0
    assert world.tree_at_spawn[1] == [] and strays[0].pid not in world.procs and TERM in strays[0].signals


def test_a_restart_beside_a_child_of_the_supervisors_own_scans_and_spares_it(tmp_path: Any) -> None:
    notifiers: list[FakeProc] = []

    def notifier(world: FakeWorld, daemon: FakeProc) -> None:  # as job/notify.py starts one: its own mark
        notifiers.append(world.fork(daemon.pid, token="other"))
        notifiers[0].ppid = SUPERVISOR
    scans, world, sup = scans_between_kill_and_restart(tmp_path, notifier)
    assert scans > 0
    assert notifiers[0].pid in world.procs and notifiers[0].signals == []
