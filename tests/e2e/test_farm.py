"""The task farm, with real processes and a real SQLite file, as the unprivileged test user:
every task exactly once, leases, SIGKILL and SIGUSR1 of a farm, retries, task timeouts that
kill a setsid grandchild, the trace, and the refusal of SQLite on a network file system."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from typing import Any

import pytest
from conftest import Sandbox, wait_for
from userkit import read_bytes, user_pids

from watchdog_singleton.errors import REQUEUE
from watchdog_singleton.farm import tasklist

# A task that waits while GO is missing (killed there, it never writes), then appends its name.
WAITER = "{{ test -e GO || sleep 600; }} && echo {name} >> out"


def write_list(box: Sandbox, lines: list[str], name: str = "tasks.txt") -> str:
    path = box.path(name)
    with open(path, "w") as f:
        f.write("".join(f"{line}\n" for line in lines))
    os.chown(path, box.user.uid, box.user.gid)
    return path


def farm(box: Sandbox, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return box.ws("farm", *args, timeout=timeout)


def start_farm(box: Sandbox, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "watchdog_singleton", "farm", *args], env=box.env(),
                            cwd=box.dir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            **box.user.popen_kwargs())


def status(box: Sandbox, listing: str) -> dict[str, Any]:
    proc = farm(box, "status", listing, "--json")
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def out_lines(box: Sandbox) -> list[str]:
    return read_bytes(box.path("out")).decode().split()


def task_pids(box: Sandbox, listing: str) -> list[int]:
    """The test user's live processes that belong to a task of this list's farm."""
    needle = f"WATCHDOG_SINGLETON_FARM={listing}.farm".encode()
    found = []
    for pid in user_pids(box.user.uid):
        stat = read_bytes(f"/proc/{pid}/stat")
        if stat and stat[stat.rindex(b")") + 2:].split()[0] not in (b"Z", b"X") \
                and needle in read_bytes(f"/proc/{pid}/environ").split(b"\0"):
            found.append(pid)
    return found


def sleeping_tasks(box: Sandbox, listing: str, n: int) -> bool:
    return sum(1 for pid in task_pids(box, listing)
               if read_bytes(f"/proc/{pid}/cmdline").startswith(b"sleep\x00600\x00")) >= n


def touch(box: Sandbox, name: str) -> None:
    with open(box.path(name), "w"):
        pass


# -- in process: the list and the store ---------------------------------------------------

def test_task_ids_survive_inserted_lines_and_tell_duplicates_apart() -> None:
    before = list(tasklist.parse(["echo a", "# comment", "", "echo b", "echo a"]))
    after = list(tasklist.parse(["echo new", "echo a", "echo b", "echo a", "echo c"]))
    assert len({t.id for t in before}) == 3  # the two `echo a` lines are two tasks
    assert {t.id for t in before} <= {t.id for t in after}
    assert [t.line for t in before] == [1, 4, 5]
    assert tasklist.argv("/bin/echo 'a b' c") == ["/bin/echo", "a b", "c"]
    assert tasklist.argv("echo a > f") == ["/bin/sh", "-c", "echo a > f"]


def test_task_ids_of_a_long_list_with_many_duplicates_count_each_copy() -> None:
    """Across the copy counter's growths, each line's id is its hash and how many copies came before."""
    import hashlib

    lines = [f"task {i % 3001}\n" for i in range(20000)]
    seen: dict[str, int] = {}
    expected = []
    for line in lines:
        full = hashlib.sha1(line.strip().encode()).hexdigest()
        expected.append(f"{full[:12]}-{seen.get(full, 0)}")
        seen[full] = seen.get(full, 0) + 1
    assert [t.id for t in tasklist.parse(lines)] == expected


def test_reading_a_list_of_100k_tasks_holds_a_few_mib_not_one_object_per_line() -> None:
    import tracemalloc

    lines = (f"true {i}\n" for i in range(100_000))
    tracemalloc.start()
    try:
        count = sum(1 for _ in tasklist.parse(lines))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert count == 100_000
    assert peak < 4 * 2**20, f"{peak / 2**20:.1f} MiB"


# -- real farms as the test user ----------------------------------------------------------

def test_five_hundred_tasks_over_eight_workers_each_run_exactly_once(sandbox: Sandbox) -> None:
    names = [f"t{i:03d}" for i in range(500)]
    listing = write_list(sandbox, [f"echo {n} >> out" for n in names])
    proc = farm(sandbox, listing, "--workers", "8", "--lease", "1")
    assert proc.returncode == 0, proc.stderr
    got = out_lines(sandbox)
    assert sorted(got) == names  # none twice, none missing
    st = status(sandbox, listing)
    assert st["counts"] == {"todo": 0, "running": 0, "finished": 500, "failed": 0}
    assert {t["attempts"] for t in st["tasks"]} == {1}
    assert len(os.listdir(os.path.join(f"{listing}.farm", "logs"))) == 500
    again = farm(sandbox, listing, "--workers", "8")  # a finished list: nothing reruns
    assert again.returncode == 0, again.stderr
    assert len(out_lines(sandbox)) == 500


def test_a_sigkilled_farm_takes_its_tasks_trees_and_the_next_farm_finishes_them(sandbox: Sandbox) -> None:
    names = [f"k{i}" for i in range(6)]
    listing = write_list(sandbox, [WAITER.format(name=n) for n in names])
    first = start_farm(sandbox, listing, "--workers", "3", "--grace", "1", "--lease", "1")
    try:
        wait_for(lambda: sleeping_tasks(sandbox, listing, 3), 30, what="three running tasks")
        os.kill(first.pid, signal.SIGKILL)
        first.wait(10)
        # The farm's watcher stops its tasks' trees: nothing of them may run on when another farm takes them.
        wait_for(lambda: task_pids(sandbox, listing) == [], 20, what="the dead farm's tasks to be stopped")
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert status(sandbox, listing)["counts"]["running"] == 3  # until their lease runs out or a farm sweeps
    touch(sandbox, "GO")
    proc = farm(sandbox, listing, "--workers", "3", "--lease", "1")
    assert proc.returncode == 0, proc.stderr
    assert sorted(out_lines(sandbox)) == names
    attempts = sorted(t["attempts"] for t in status(sandbox, listing)["tasks"])
    assert attempts == [1, 1, 1, 2, 2, 2]


def test_sigusr1_requeues_running_tasks_and_the_next_farm_finishes_them(sandbox: Sandbox) -> None:
    names = [f"u{i}" for i in range(4)]
    listing = write_list(sandbox, [WAITER.format(name=n) for n in names])
    first = start_farm(sandbox, listing, "--workers", "4", "--grace", "2")
    try:
        wait_for(lambda: sleeping_tasks(sandbox, listing, 4), 30, what="four running tasks")
        second = farm(sandbox, listing, "--workers", "1")
        assert second.returncode == 1 and "another farm runs" in second.stderr, second.stderr
        os.kill(first.pid, signal.SIGUSR1)
        _, err = first.communicate(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert first.returncode == REQUEUE, err
    assert "run the farm again" in err
    assert task_pids(sandbox, listing) == []
    st = status(sandbox, listing)
    assert st["counts"]["todo"] == 4 and {t["failures"] for t in st["tasks"]} == {0}
    touch(sandbox, "GO")
    proc = farm(sandbox, listing, "--workers", "4")
    assert proc.returncode == 0, proc.stderr
    assert sorted(out_lines(sandbox)) == names


def test_tasks_appended_to_the_list_join_a_running_farm(sandbox: Sandbox) -> None:
    listing = write_list(sandbox, ["while [ ! -e GO ]; do sleep 0.1; done; echo first >> out"])
    running = start_farm(sandbox, listing, "--workers", "2")
    try:
        wait_for(lambda: task_pids(sandbox, listing), 30, what="the first task")
        with open(listing, "a") as f:
            f.write("echo added >> out\n")
        wait_for(lambda: out_lines(sandbox) == ["added"], 30, what="the added task to run")
        touch(sandbox, "GO")
        running.communicate(timeout=30)
    finally:
        if running.poll() is None:
            running.kill()
            running.wait()
    assert running.returncode == 0
    assert sorted(out_lines(sandbox)) == ["added", "first"]


def test_retries_rerun_failed_tasks_and_the_trace_has_one_event_per_attempt(sandbox: Sandbox) -> None:
    listing = write_list(sandbox, ["test -e once.flag && echo once >> out || { touch once.flag; exit 1; }",
                                   "sh -c 'exit 3'"])
    proc = farm(sandbox, listing, "--retries", "1")
    assert proc.returncode == 1, proc.stderr  # done, with a failure
    tasks = {t["command"]: t for t in status(sandbox, listing)["tasks"]}
    once, never = tasks[open(listing).readline().strip()], tasks["sh -c 'exit 3'"]
    assert (once["state"], once["attempts"]) == ("finished", 2)
    assert (never["state"], never["attempts"], never["code"]) == ("failed", 2, 3)
    assert "1 failed task(s) back to todo" in farm(sandbox, "retry", listing).stdout
    assert farm(sandbox, listing, "--retries", "0").returncode == 1
    st = status(sandbox, listing)
    assert {t["command"]: t["attempts"] for t in st["tasks"]}["sh -c 'exit 3'"] == 3
    assert out_lines(sandbox) == ["once"]

    trace_file = sandbox.path("trace.json")
    assert farm(sandbox, "trace", listing, "-o", trace_file).returncode == 0
    with open(trace_file) as f:
        trace = json.load(f)
    attempts = [e for e in trace["traceEvents"] if e["ph"] == "X"]
    assert len(attempts) == sum(t["attempts"] for t in st["tasks"]) == 5
    assert sorted(e["cat"] for e in attempts) == ["failed", "failed", "failed", "failed", "finished"]
    assert sum(1 for e in attempts if e["args"]["retry"]) == 3
    assert all(e["dur"] >= 0 and isinstance(e["tid"], int) for e in attempts)


def test_a_task_timeout_kills_a_setsid_grandchild(sandbox: Sandbox) -> None:
    # The grandchild has a session of its own (no process-group kill reaches it) and writes its pid.
    hang = "setsid sh -c 'echo $$ > gc.pid; exec sleep 600' & sleep 600"
    # Runs next, in the same farm (one worker): finishes only if the grandchild is gone by then.
    watch = ("while [ ! -s gc.pid ]; do sleep 0.05; done; p=$(cat gc.pid); i=0; "
             "while kill -0 $p 2>/dev/null; do sleep 0.1; i=$((i+1)); [ $i -gt 10 ] && exit 1; done; "
             "echo gone >> out")
    listing = write_list(sandbox, [hang, watch])
    began = time.monotonic()
    proc = farm(sandbox, listing, "--workers", "1", "--task-timeout", "2", "--grace", "1")
    assert proc.returncode == 1, proc.stderr
    assert time.monotonic() - began < 30
    tasks = {t["command"]: t for t in status(sandbox, listing)["tasks"]}
    assert tasks[hang]["state"] == "failed" and tasks[hang]["code"] < 0
    assert tasks[watch]["state"] == "finished"
    assert out_lines(sandbox) == ["gone"]
    timeline = [json.loads(line) for line in open(os.path.join(f"{listing}.farm", "timeline.jsonl"))]
    assert sorted(t["outcome"] for t in timeline) == ["finished", "timeout"]


def test_sqlite_on_a_network_file_system_is_refused(sandbox: Sandbox) -> None:
    if os.getuid() != 0 or not shutil.which("bindfs"):
        pytest.skip("needs root and bindfs (a FUSE file system) to mount one")
    listing = write_list(sandbox, ["echo never >> out"])
    src, mnt = sandbox.mkdir("fuse-src"), sandbox.mkdir("fuse-mnt")
    subprocess.run(["bindfs", src, mnt], check=True)
    try:
        proc = farm(sandbox, listing, "--workdir", os.path.join(mnt, "work"))
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.splitlines()
        assert len(lines) == 1 and "FUSE" in lines[0] and "postgresql://" in lines[0], proc.stderr
        assert os.listdir(src) == [] and not os.path.exists(sandbox.path("out"))
    finally:
        subprocess.run(["umount", "-l", mnt])


@pytest.mark.parametrize("args,needle", [
    (["--workers", "0"], "--workers 0"),
    (["--retries", "-1"], "--retries -1"),
    (["--lease", "0"], "--lease 0"),
    (["--runner", "nope"], "no runner named nope"),
])
def test_bad_farm_options_are_refused_with_one_line_and_nothing_created(sandbox: Sandbox, args: list[str],
                                                                        needle: str) -> None:
    listing = write_list(sandbox, ["echo never >> out"])
    before = sorted(os.listdir(sandbox.dir))
    proc = farm(sandbox, listing, *args)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and needle in lines[0] and lines[0].startswith("watchdog-singleton: "), proc.stderr
    assert sorted(os.listdir(sandbox.dir)) == before


def test_a_missing_task_list_is_refused(sandbox: Sandbox) -> None:
    proc = farm(sandbox, sandbox.path("no-such-list.txt"))
    assert proc.returncode == 2 and "does not exist" in proc.stderr
    assert not os.path.exists(sandbox.path("no-such-list.txt.farm"))


# --- the run path without typer (farmargs.py): the same requests, typer's errors ---
SAME_AS_TYPER = [
    ["tasks.txt"],
    ["run", "tasks.txt"],
    ["tasks.txt", "--workers", "8", "--timeout", "3.5", "--task-timeout=60", "--retries", "2"],
    ["-n8", "tasks.txt", "--lease", "2", "--grace", "0", "--progress-every", "1e1"],
    ["--workers", "3", "-n", "5", "tasks.txt", "--workdir", "-w", "--db", "sqlite://:memory:"],
    ["tasks.txt", "--runner=gpu", "--from-pytaskfarmer", "tasks.txt_workdir", "--retries", "-1"],
    ["run", "--", "-tasks.txt"],
    ["run", "status"],
    ["tasks.txt", "--workers", " +7 ", "--timeout", "inf"],
]


def typer_request(args: list[str], monkeypatch: pytest.MonkeyPatch) -> Any:
    """The FarmRequest typer's `farm ARGS` hands to commands.farm.run."""
    from watchdog_singleton.cli import app as cli
    from watchdog_singleton.commands import farm as farm_command

    seen: list[Any] = []

    def fake_run(req: Any, echo: Any, warn: Any) -> int:
        seen.append(req)
        return 0
    monkeypatch.setattr(farm_command, "run", fake_run)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["farm", *args])
    assert exit_info.value.code == 0
    return seen[0]


@pytest.mark.parametrize("args", SAME_AS_TYPER, ids=" ".join)
def test_the_farm_run_path_parses_as_typer_does(args: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from watchdog_singleton.cli import farmargs

    assert farmargs.parse(args) == typer_request(args, monkeypatch)


@pytest.mark.parametrize("args", [
    [], ["--help"], ["-h"], ["run"], ["run", "--help"], ["tasks.txt", "--help"], ["status", "tasks.txt"],
    ["retry"], ["trace", "x"], ["tasks.txt", "--workers", "x"], ["tasks.txt", "-n=8"], ["tasks.txt", "--worker", "3"],
    ["tasks.txt", "--workers"], ["a.txt", "b.txt"], ["--workers", "2"], ["tasks.txt", "--timeout", "soon"],
    ["tasks.txt", "-x"], ["tasks.txt", "--json"],
], ids=" ".join)
def test_help_and_usage_errors_are_left_to_typer(args: list[str]) -> None:
    from watchdog_singleton.cli import farmargs

    assert farmargs.parse(args) is None


@pytest.mark.parametrize("args,needle", [
    (["--workers", "x"], "Invalid value for '--workers' / '-n'"),
    (["--bogus"], "No such option: --bogus"),
    (["--workers"], "requires an argument"),
])
def test_farm_usage_errors_stay_one_line_and_exit_2(sandbox: Sandbox, args: list[str], needle: str) -> None:
    listing = write_list(sandbox, ["echo never >> out"])
    proc = farm(sandbox, listing, *args)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and needle in lines[0] and lines[0].startswith("watchdog-singleton: "), proc.stderr
    assert not os.path.exists(f"{listing}.farm")


def test_a_farm_run_loads_no_cli_stack(sandbox: Sandbox) -> None:
    """`farm LIST` is parsed before typer, click, pydantic or rich would be imported: a one-task
    list costs about what GNU parallel's start costs, not several interpreter starts more."""
    listing = write_list(sandbox, ["echo ran >> out"])
    probe = ("import json, sys\n"
             "from watchdog_singleton.__main__ import main\n"
             "try:\n"
             f"    main(['farm', {listing!r}, '--workers', '2'])\n"
             "except SystemExit as exc:\n"
             "    code = exc.code\n"
             "print(json.dumps([code, sorted({m.split('.')[0] for m in sys.modules})]))\n")
    proc = sandbox.run_as([sys.executable, "-c", probe])
    code, loaded = json.loads(proc.stdout.splitlines()[-1])
    assert code == 0, proc.stderr
    assert out_lines(sandbox) == ["ran"]
    assert not {"typer", "click", "pydantic", "rich", "argparse"} & set(loaded), loaded


@pytest.mark.parametrize("namespace", ["1", "0"])
def test_a_task_holds_no_descriptor_of_the_farm_or_its_nursery(sandbox: Sandbox, namespace: str) -> None:
    """Tasks are spawned without closing descriptors one by one: every one of the nursery's must
    be close-on-exec (its socket to the farm above all: a task holding it would keep the nursery's
    EOF from coming when the farm dies)."""
    listing = write_list(sandbox, ["ls /proc/self/fd > fds"])
    proc = sandbox.ws("farm", listing, env=sandbox.env({"WATCHDOG_SINGLETON_FARM_NAMESPACE": namespace}))
    assert proc.returncode == 0, proc.stderr
    # 0-2, and the folder `ls` reads
    assert sorted(int(fd) for fd in read_bytes(sandbox.path("fds")).split()) == [0, 1, 2, 3]


@pytest.mark.parametrize("clear", [True, False])
def test_the_watcher_scans_unless_the_farm_said_all_clear(tmp_path: Any, clear: bool) -> None:
    """A farm that ended on its own stopped its leftovers itself: its watcher exits at once
    instead of scanning /proc again (the farm waits for it). Without the word, it stops them."""
    from watchdog_singleton.envvars import TOKEN_ENV
    from watchdog_singleton.farm.reaper import ALL_CLEAR

    marker = f"{tmp_path}/farm.lock#{os.getpid()}#"
    marked = subprocess.Popen(["sleep", "600"], env={**os.environ, TOKEN_ENV: f"{marker}task#1"})
    try:
        r, w = os.pipe()
        watcher = subprocess.Popen([sys.executable, "-m", "watchdog_singleton.farm.reaper", marker, "1"], stdin=r)
        os.close(r)
        if clear:
            os.write(w, ALL_CLEAR)
        os.close(w)
        assert watcher.wait(30) == 0
        assert (marked.poll() is None) == clear
    finally:
        marked.kill()
        marked.wait()
