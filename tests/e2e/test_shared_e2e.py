"""Shared mode end to end, as the test user: several jobs under one shared resident process, each
still under its own lock, and one job's fault or stop never reaching another's."""

from __future__ import annotations

import _socket
import marshal
import os
import signal
import subprocess
import sys

import pytest
from conftest import Sandbox, ensure_user, holds_for, is_zombie, pids_with_arg, wait_for
from sharedkit import kill_anchor, residents

NEVER = "0 0 1 1 *"  # cron does not fire it during a test: starts come from install, start and run


def install_shared(box: Sandbox, base: str, *command: str) -> tuple[str, str]:
    """Install a shared sleeper (or COMMAND); return its name and the marker in its argv."""
    name = box.job(base)
    marker = f"marker-{name}"
    argv = list(command) or ["/usr/bin/python3", "-c", "import time; time.sleep(10**6)", marker]
    box.ok("install", name, "--shared", "--schedule", NEVER, "--grace", "2", "--", *argv)
    return name, marker


def alive_pid(pid: int) -> bool:
    return os.path.exists(f"/proc/{pid}") and not is_zombie(pid)






def one_pid(box: Sandbox, marker: str) -> int:
    pids = pids_with_arg(marker, box.user.uid)
    assert len(pids) == 1, pids
    return pids[0]


def test_three_shared_jobs_run_under_one_resident_process(sandbox: Sandbox) -> None:
    jobs = [install_shared(sandbox, base) for base in ("a", "b", "c")]
    [house] = residents(sandbox)
    for name, marker in jobs:
        info = sandbox.status(name)
        assert info["running"] and info["shared"] and info["supervisor_pid"] == house
        assert info["pid"] == one_pid(sandbox, marker)
    assert "(shared supervisor" in sandbox.ok("status").stdout
    # Each daemon holds its own lock and none of the others'.
    lock_dir = sandbox.lock_dir()
    for name, marker in jobs:
        pid = one_pid(sandbox, marker)
        held = {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
        locks = {path for path in held if path.startswith(lock_dir) and path.endswith(".lock")}
        assert locks == {os.path.join(lock_dir, f"{name}.lock")}, locks


def test_kill_9_of_one_daemon_restarts_only_that_job(sandbox: Sandbox) -> None:
    jobs = [install_shared(sandbox, base) for base in ("x", "y", "z")]
    before = {name: one_pid(sandbox, marker) for name, marker in jobs}
    victim_name, victim_marker = jobs[1]
    os.kill(before[victim_name], signal.SIGKILL)
    wait_for(lambda: pids_with_arg(victim_marker, sandbox.user.uid) not in ([], [before[victim_name]]), 20,
             interval=0.02, what="a new copy after kill -9")
    assert holds_for(lambda: len(pids_with_arg(victim_marker, sandbox.user.uid)) == 1, 1.0)
    for name, marker in jobs:
        if name != victim_name:
            assert pids_with_arg(marker, sandbox.user.uid) == [before[name]], name
    info = sandbox.status(victim_name)
    assert info["restarts"] == 1 and info["last_exit_code"] == -9
    assert len(residents(sandbox)) == 1


def test_stop_of_one_shared_job_leaves_the_others_pids_unchanged(sandbox: Sandbox) -> None:
    jobs = [install_shared(sandbox, base) for base in ("p", "q", "r")]
    before = {name: one_pid(sandbox, marker) for name, marker in jobs}
    [house] = residents(sandbox)
    stopped, marker = jobs[0]
    assert "stopped" in sandbox.ok("stop", stopped).stdout
    assert pids_with_arg(marker, sandbox.user.uid) == []
    for name, other in jobs[1:]:
        assert pids_with_arg(other, sandbox.user.uid) == [before[name]]
    assert residents(sandbox) == [house]
    assert sandbox.status(stopped)["phase"] == "stopped"
    # Started again, it goes back to the same resident.
    sandbox.ok("start", stopped)
    assert sandbox.status(stopped)["supervisor_pid"] == house
    sandbox.ok("restart", jobs[1][0])
    assert pids_with_arg(jobs[2][1], sandbox.user.uid) == [before[jobs[2][0]]]
    assert pids_with_arg(jobs[1][1], sandbox.user.uid) not in ([], [before[jobs[1][0]]])


def test_uninstall_of_one_shared_job_kills_its_double_forked_grandchild(sandbox: Sandbox) -> None:
    daemon = sandbox.write_helper("tree_daemon.py")
    pidfile = sandbox.path("tree.pids")
    name, _ = install_shared(sandbox, "tree", "/usr/bin/python3", daemon, pidfile)
    other, marker = install_shared(sandbox, "bystander")
    bystander = one_pid(sandbox, marker)
    wait_for(lambda: os.path.exists(pidfile), 20, what="the tree to be ready")
    pids = [int(p) for p in open(pidfile).read().split()]
    assert len(pids) == 4 and all(alive_pid(p) for p in pids)
    [house] = residents(sandbox)
    proc = sandbox.ws("uninstall", name)
    assert proc.returncode == 0, proc.stderr
    assert [p for p in pids if alive_pid(p)] == []
    assert pids_with_arg(marker, sandbox.user.uid) == [bystander]
    assert residents(sandbox) == [house]
    assert sandbox.status(other)["running"]


def test_a_peer_of_another_uid_is_refused(sandbox: Sandbox) -> None:
    name, marker = install_shared(sandbox, "guarded")
    pid = one_pid(sandbox, marker)
    from watchdog_singleton.supervisor.housewire import socket_path

    path = socket_path(sandbox.lock_dir(), sandbox.state_root)
    # Another user cannot even reach the socket: the folder is the user's own, 0700.
    stranger = ensure_user(f"{sandbox.user.name}x")
    probe = f"import socket; s = socket.socket(socket.AF_UNIX); s.connect({path!r})"
    denied = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd="/",
                            **stranger.popen_kwargs())
    assert denied.returncode != 0 and "Permission denied" in denied.stderr
    # root reaches it (root passes every folder's mode), but is not our uid: not a word, and no stop.
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    sock.settimeout(10)
    try:
        sock.connect(path)
        data = marshal.dumps({"op": "stop", "name": name})
        try:
            sock.sendall(len(data).to_bytes(4, "little") + data)
        except OSError:
            pass  # it hung up first
        try:
            answer = sock.recv(100)
        except ConnectionResetError:
            answer = b""
    finally:
        sock.close()
    assert answer == b""
    assert holds_for(lambda: pids_with_arg(marker, sandbox.user.uid) == [pid], 1.0)


def test_kill_9_of_the_shared_resident_never_yields_a_second_copy(sandbox: Sandbox) -> None:
    jobs = [install_shared(sandbox, base) for base in ("m", "n")]
    before = {name: one_pid(sandbox, marker) for name, marker in jobs}
    [house] = residents(sandbox)
    kill_anchor(house)  # with it, a new resident takes over at once (test_house_anchor_e2e.py)
    os.kill(house, signal.SIGKILL)
    wait_for(lambda: not alive_pid(house), 10, what="the resident to die")
    for name, _ in jobs:  # manual starts find the lock held (a tick adopts: test_house_adopt_e2e.py)
        sandbox.ws("run", name, "--detach")
        sandbox.ws("start", name)
    for name, marker in jobs:
        assert pids_with_arg(marker, sandbox.user.uid) == [before[name]], name
        info = sandbox.status(name)
        assert info["running"] and info["supervisor_pid"] is None
        assert "shared supervisor" in info["problem"] and "is gone" in info["problem"]
    # With no resident to ask, stop ends that job's tree itself, and only it.
    stopped, stopped_marker = jobs[1]
    assert "stopped" in sandbox.ok("stop", stopped).stdout
    assert pids_with_arg(stopped_marker, sandbox.user.uid) == []
    assert pids_with_arg(jobs[0][1], sandbox.user.uid) == [before[jobs[0][0]]]
    # Once a daemon ends, its lock is free: the next tick starts it under a new resident.
    name, marker = jobs[0]
    os.kill(before[name], signal.SIGKILL)
    wait_for(lambda: pids_with_arg(marker, sandbox.user.uid) == [], 10, what="the daemon to die")
    sandbox.fire_tick(name)
    wait_for(lambda: len(pids_with_arg(marker, sandbox.user.uid)) == 1, 20, what="a new copy")
    [new_house] = wait_for(lambda: residents(sandbox), 10, what="a new resident")
    assert new_house != house
    assert sandbox.status(name)["supervisor_pid"] == new_house


def test_shared_is_refused_with_lean(sandbox: Sandbox) -> None:
    """(With --cluster it is allowed: tests/e2e/test_house_cluster_e2e.py.)"""
    name = sandbox.job("refused")
    proc = sandbox.ws("install", name, "--shared", "--lean", "--", "/bin/sleep", "100")
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "--shared" in proc.stderr
    assert sandbox.ws("status", name).returncode == 4


@pytest.mark.parametrize("count", [2])
def test_sigterm_to_the_shared_resident_stops_every_job(sandbox: Sandbox, count: int) -> None:
    jobs = [install_shared(sandbox, f"t{i}") for i in range(count)]
    [house] = residents(sandbox)
    os.kill(house, signal.SIGTERM)
    wait_for(lambda: not alive_pid(house), 20, what="the resident to end")
    for name, marker in jobs:
        assert pids_with_arg(marker, sandbox.user.uid) == []
        assert sandbox.status(name)["phase"] == "stopped"


def test_ticks_racing_to_become_the_resident_make_one(sandbox: Sandbox) -> None:
    names = [sandbox.job(f"race{i}") for i in range(4)]
    for name in names:
        sandbox.ok("install", name, "--shared", "--no-start", "--schedule", NEVER, "--", "/bin/sleep", "100000")
    runners = [subprocess.Popen([sys.executable, "-m", "watchdog_singleton", "run", name, "--detach"],
                                env=sandbox.env(), cwd=sandbox.dir, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                **sandbox.user.popen_kwargs()) for name in names]
    try:
        for runner in runners:
            out, err = runner.communicate(timeout=60)
            assert runner.returncode == 0, err
            assert b"running" in out
    finally:
        for runner in runners:
            if runner.poll() is None:
                runner.kill()
                runner.wait()
    [house] = residents(sandbox)
    for name in names:
        info = sandbox.status(name)
        assert info["running"] and info["supervisor_pid"] == house


def test_a_changed_setting_reaches_one_shared_job_without_a_restart(sandbox: Sandbox) -> None:
    (name, marker), (other, other_marker) = install_shared(sandbox, "tuned"), install_shared(sandbox, "calm")
    pid, other_pid = one_pid(sandbox, marker), one_pid(sandbox, other_marker)
    out = sandbox.ok("install", name, "--shared", "--schedule", NEVER, "--grace", "7", "--", "/usr/bin/python3",
                     "-c", "import time; time.sleep(10**6)", marker).stdout
    assert f"runs on (pid {pid}) with the new settings" in out
    assert pids_with_arg(marker, sandbox.user.uid) == [pid]
    assert pids_with_arg(other_marker, sandbox.user.uid) == [other_pid]
    log = sandbox.path("state", "watchdog-singleton", os.uname().nodename, "logs", f"{name}.stderr.log")
    wait_for(lambda: "re-read its definition" in open(log).read(), 10, what="the reload in the log")
    assert "re-read its definition" not in open(log.replace(name, other)).read()


def test_two_state_folders_sharing_one_lock_folder_get_a_resident_each(sandbox: Sandbox) -> None:
    """WATCHDOG_SINGLETON_LOCK_DIR may serve several state folders: each one's shared jobs go to
    a resident of its own, which keeps their run state where their `status` reads it."""
    locks = sandbox.mkdir("locks")
    other_home = sandbox.mkdir("state2")
    for folder in (locks, other_home):
        os.chown(folder, sandbox.user.uid, sandbox.user.gid)
        os.chmod(folder, 0o700)
    envs = [sandbox.env({"WATCHDOG_SINGLETON_LOCK_DIR": locks}),
            sandbox.env({"WATCHDOG_SINGLETON_LOCK_DIR": locks, "XDG_STATE_HOME": other_home})]
    names = [sandbox.job("first"), sandbox.job("second")]
    try:
        for name, env in zip(names, envs):
            sandbox.ok("install", name, "--shared", "--schedule", NEVER, "--grace", "2", "--",
                       "/usr/bin/python3", "-c", "import time; time.sleep(10**6)", f"marker-{name}", env=env)
        infos = [json_status(sandbox, name, env) for name, env in zip(names, envs)]
        assert all(info["running"] and info["shared"] for info in infos), infos
        assert infos[0]["supervisor_pid"] != infos[1]["supervisor_pid"], infos
        assert len([n for n in os.listdir(locks) if n.endswith(".sock")]) == 2, os.listdir(locks)
    finally:
        for name, env in zip(names, envs):
            sandbox.ws("uninstall", name, env=env)


def json_status(box: Sandbox, name: str, env: dict[str, str]) -> dict[str, object]:
    import json

    proc = box.ws("status", name, "--json", env=env)
    assert proc.returncode in (0, 3), proc.stderr
    info = json.loads(proc.stdout)
    assert isinstance(info, dict)
    return info
