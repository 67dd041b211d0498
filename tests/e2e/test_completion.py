"""Shell completion through the protocol typer's scripts use (_WATCHDOG_SINGLETON_COMPLETE with
COMP_WORDS/COMP_CWORD for bash, _TYPER_COMPLETE_ARGS for zsh), as the test user."""

from __future__ import annotations

import os
import time

from conftest import Sandbox

PROG = "watchdog-singleton"


def complete(box: Sandbox, line: str, env: dict[str, str] | None = None, cwd: str | None = None) -> list[str]:
    """What bash gets for `line` (the cursor at its end): one candidate a line."""
    words = line.split()
    cword = len(words) if line.endswith(" ") else len(words) - 1
    extra = {"_WATCHDOG_SINGLETON_COMPLETE": "complete_bash", "COMP_WORDS": line, "COMP_CWORD": str(cword)}
    started = time.monotonic()
    proc = box.ws(env=box.env({**extra, **(env or {})}), cwd=cwd)
    took = time.monotonic() - started
    assert proc.returncode == 0 and proc.stderr == "", proc
    assert took < 10, f"completion took {took:.1f} s"
    return [item for item in proc.stdout.split("\n") if item]


def test_job_names_complete_for_every_command_that_takes_one(sandbox: Sandbox) -> None:
    web, worker = sandbox.job("web"), sandbox.job("worker")
    for name in (web, worker):
        sandbox.ok("install", name, "--no-start", "--", "/bin/sleep", "1000")
    both = sorted([web, worker])
    for command in ("status", "logs", "stop", "start", "restart", "uninstall", "install", "export",
                    "lease check", "lease status"):
        assert complete(sandbox, f"{PROG} {command} ") == both, command
    assert complete(sandbox, f"{PROG} stop w") == both
    assert complete(sandbox, f"{PROG} stop we") == [web]
    assert complete(sandbox, f"{PROG} stop {web}") == [web]
    assert complete(sandbox, f"{PROG} export {web} ") == [worker]  # not twice
    assert complete(sandbox, f"{PROG} logs {web} --st") == ["--stderr"]


def test_without_a_state_folder_names_complete_to_nothing_and_quietly(sandbox: Sandbox) -> None:
    missing = {"XDG_STATE_HOME": sandbox.path("nowhere")}
    for line in (f"{PROG} status ", f"{PROG} stop x", f"{PROG} run ", f"{PROG} export "):
        assert complete(sandbox, line, missing) == [], line
    unreadable = sandbox.path("locked")
    os.makedirs(unreadable, mode=0o000)  # root-owned, mode 0: the test user cannot list it
    assert complete(sandbox, f"{PROG} status ", {"XDG_STATE_HOME": unreadable}) == []


def test_run_completes_name_then_its_own_options_and_values(sandbox: Sandbox) -> None:
    web = sandbox.job("web")
    sandbox.ok("install", web, "--no-start", "--", "/bin/sleep", "1000")
    assert complete(sandbox, f"{PROG} run ") == [web]
    options = complete(sandbox, f"{PROG} run {web} --")
    assert {"--detach", "--restart", "--lock-dir", "--env", "--cluster", "--help"} <= set(options)
    assert "--cron" not in options and "--state-dir" not in options  # what our crontab lines pass
    assert complete(sandbox, f"{PROG} run {web} --det") == ["--detach"]
    assert complete(sandbox, f"{PROG} run {web} --restart ") == ["always", "on-failure", "never"]
    assert complete(sandbox, f"{PROG} run {web} --restart = on") == ["on-failure"]
    assert complete(sandbox, f"{PROG} run {web} -- /bin/sleep ") == []  # the command: bash completes files
    assert complete(sandbox, f"{PROG} run --detach ") == [web]


def test_scheduler_names_complete_for_submit(sandbox: Sandbox) -> None:
    assert complete(sandbox, f"{PROG} submit web --scheduler ") == ["slurm", "pbs", "htcondor"]
    assert complete(sandbox, f"{PROG} submit web --scheduler p") == ["pbs"]


def test_farm_completes_task_lists_and_work_folders(sandbox: Sandbox) -> None:
    for name in ("tasks.txt", "more.txt"):
        with open(sandbox.path(name), "w") as fh:
            fh.write("echo hi\n")
    sandbox.mkdir("tasks.txt.farm")
    sandbox.mkdir("sub")
    sandbox.mkdir("elsewhere")
    with open(sandbox.path("elsewhere", "farm.sqlite"), "w"):
        pass
    cwd = sandbox.dir
    assert complete(sandbox, f"{PROG} farm status ", cwd=cwd) == ["elsewhere", "sub/", "tasks.txt", "tasks.txt.farm"]
    assert complete(sandbox, f"{PROG} farm trace tasks", cwd=cwd) == ["tasks.txt", "tasks.txt.farm"]
    assert complete(sandbox, f"{PROG} farm run ", cwd=cwd) == ["more.txt", "sub/", "tasks.txt"]
    first = complete(sandbox, f"{PROG} farm ", cwd=cwd)
    assert first[:4] == ["run", "status", "retry", "trace"] and "tasks.txt" in first
    assert complete(sandbox, f"{PROG} farm status sub/", cwd=cwd) == []
    assert "--workers" in complete(sandbox, f"{PROG} farm tasks.txt --w", cwd=cwd)


def test_zsh_gets_run_options_with_their_help(sandbox: Sandbox) -> None:
    proc = sandbox.ws(env=sandbox.env({"_WATCHDOG_SINGLETON_COMPLETE": "complete_zsh",
                                       "_TYPER_COMPLETE_ARGS": f"{PROG} run web --det"}))
    assert proc.returncode == 0 and proc.stderr == "", proc
    assert "--detach" in proc.stdout and "return once the daemon runs" in proc.stdout
