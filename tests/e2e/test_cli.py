"""The command line as a user meets it: run's options anywhere before --, usage errors in one
line, every number option checked against jobs.LIMITS, a status table read at a glance,
--version, and help texts in one style with an example each."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
from typing import Any

import pytest
from conftest import Sandbox, pids_with_arg, wait_for
from docskit import docs_text
from userkit import read_bytes

from watchdog_singleton.commands.status import exit_word, table
from watchdog_singleton.errors import USAGE, UserError
from watchdog_singleton.job.model import LIMITS
from watchdog_singleton.tick import runargs

COMMANDS = ("install", "run", "status", "logs", "stop", "start", "restart", "uninstall", "apply", "export")


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The CLI as the account running the tests, for what touches no crontab and no state."""
    return subprocess.run([sys.executable, "-m", "watchdog_singleton", *args], capture_output=True, text=True,
                          env=env, timeout=60)


@pytest.fixture
def quiet_env(tmp_path: Any) -> dict[str, str]:
    """An environment whose state folder is a fresh temporary one."""
    return {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "XDG_STATE_HOME": str(tmp_path / "state"),
            "LANG": "C.UTF-8"}


# --- run's arguments, parsed without argparse (unit tests, no root) ---

SAME_RUN = [
    ["--detach", "--restart", "always", "web", "--", "/bin/sleep", "30"],
    ["web", "--detach", "--restart", "always", "--", "/bin/sleep", "30"],
    ["web", "--detach", "--restart=always", "/bin/sleep", "30"],
    ["--restart=always", "web", "--detach", "/bin/sleep", "30"],
]


@pytest.mark.parametrize("argv", SAME_RUN, ids=[" ".join(a) for a in SAME_RUN])
def test_run_options_parse_before_and_after_name(argv: list[str]) -> None:
    args = runargs.parse(argv)
    assert (args.name, args.detach, args.restart, args.command) == ("web", True, "always", ["/bin/sleep", "30"])


@pytest.mark.parametrize("form", ["space", "equals"])
def test_every_run_option_parses_after_name_in_both_forms(form: str) -> None:
    def opt(option: str, value: str) -> list[str]:
        return [f"{option}={value}"] if form == "equals" else [option, value]

    argv = ["web", *opt("--state-dir", "/s"), *opt("--lock-dir", "/l"), *opt("--log-dir", "/g"),
            *opt("--workdir", "/w"), *opt("--env", "A=1"), *opt("--env", "B=x=y"), *opt("--grace", "2.5"),
            *opt("--restart", "on-failure"), *opt("--settle", "0.5"), "--allow-network-fs", "--forking",
            *opt("--cluster", "postgresql://u@db/ws"), *opt("--lease", "30"), "--standby", "--rotate",
            "--cron", "--detach", "--", "prog", "--detach", "--", "x"]
    assert vars(runargs.parse(argv)) == {
        "name": "web", "command": ["prog", "--detach", "--", "x"], "detach": True, "cron": True,
        "state_dir": "/s", "lock_dir": "/l", "log_dir": "/g", "workdir": "/w", "env": ["A=1", "B=x=y"],
        "grace": 2.5, "restart": "on-failure", "settle": 0.5, "forking": True, "allow_network_fs": True,
        "cluster": "postgresql://u@db/ws", "lease": 30.0, "standby": True, "rotate": True, "help": False}


def test_run_defaults_are_those_the_launcher_always_had() -> None:
    args = runargs.parse(["web"])
    assert (args.name, args.command, args.detach, args.cron, args.grace, args.restart, args.env) == \
        ("web", [], False, False, 10.0, "never", [])
    assert (args.settle, args.forking, args.allow_network_fs, args.state_dir, args.lock_dir) == \
        (None, False, False, None, None)


def test_what_follows_the_command_belongs_to_the_command() -> None:
    assert runargs.parse(["web", "--", "prog", "--grace", "nan", "--help"]).command == \
        ["prog", "--grace", "nan", "--help"]
    args = runargs.parse(["web", "./prog", "--detach"])
    assert args.command == ["./prog", "--detach"] and not args.detach


def test_run_help_is_recognised_anywhere_before_the_command() -> None:
    assert runargs.parse(["--help"]).help
    assert runargs.parse(["web", "--bogus", "-h"]).help
    assert not runargs.parse(["web", "--", "prog", "--help"]).help


BAD_RUNS = [
    ([], "missing NAME"),
    (["--", "/bin/true"], "missing NAME"),
    (["web", "--bogus", "--", "/bin/true"], "--bogus"),
    (["web", "--grace"], "--grace needs a value"),
    (["--detach=yes", "web"], "--detach takes no value"),
    (["web", "--restart", "sometimes"], "'sometimes'"),
    (["web", "--grace", "soon"], "'soon' is not a number"),
    (["web", "--grace=nan"], "--grace nan: must be from 0 to 3600"),
    (["web", "--settle", "1e999"], "--settle inf: must be from 0 to 60"),
]


@pytest.mark.parametrize("argv,needle", BAD_RUNS, ids=[n for _, n in BAD_RUNS])
def test_run_usage_errors_are_one_line_naming_the_problem(argv: list[str], needle: str) -> None:
    with pytest.raises(UserError) as caught:
        runargs.parse(argv)
    assert needle in str(caught.value) and "\n" not in str(caught.value)
    assert caught.value.exit_code == USAGE


@pytest.mark.parametrize("argv", [a for a, _ in BAD_RUNS], ids=[n for _, n in BAD_RUNS])
def test_a_run_usage_error_is_one_line_on_stderr_and_exit_2(quiet_env: dict[str, str], argv: list[str]) -> None:
    proc = cli("run", *argv, env=quiet_env)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("watchdog-singleton: "), proc.stderr


def test_run_help_prints_a_short_usage_and_exits_0(quiet_env: dict[str, str]) -> None:
    proc = cli("run", "web", "--help", env=quiet_env)
    assert proc.returncode == 0 and proc.stderr == ""
    assert proc.stdout.startswith("usage: watchdog-singleton run NAME")
    for option in (set(runargs.FLAGS) | set(runargs.VALUES)) - {"--cron", "--state-dir"}:
        assert option in proc.stdout
    assert len(proc.stdout.splitlines()) < 40


def test_the_launcher_does_not_load_argparse() -> None:
    probe = ("import sys; from watchdog_singleton.tick import launch; "
             "launch.runargs.parse(['web', '--detach', '--grace', '3', '--', 'x']); "
             "print('argparse' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "False", proc.stderr


def test_run_with_options_after_name_detaches_a_real_daemon(sandbox: Sandbox) -> None:
    name = sandbox.job("adhoc")
    proc = sandbox.ws("run", name, "--detach", "--restart", "never", "--", "/bin/sleep", "30")
    assert proc.returncode == 0, proc.stderr
    info = wait_for(lambda: (lambda i: i if i["running"] else None)(sandbox.status(name)), 10,
                    what="the ad-hoc daemon to run")
    assert read_bytes(f"/proc/{info['pid']}/cmdline") == b"/bin/sleep\x0030\x00"
    assert info["command"] == ["/bin/sleep", "30"]
    assert info["stdout_log"]  # --detach sends the output to log files


# --- numbers: finite and within jobs.LIMITS, or exit 2 with nothing changed ---

HUGE = {"--log-max-bytes": str(2**41), "--log-backups": str(10**12)}
INSTALL_NUMBERS = ["--grace", "--backoff-initial", "--backoff-max", "--min-uptime", "--log-max-bytes",
                   "--log-backups", "--settle", "--every", "--timeout", "--jitter", "--max-lifetime", "--lease",
                   "--notify-every"]
BAD_VALUES = ["nan", "inf", "-1", "huge"]


def test_every_number_option_has_a_stated_range_and_the_readme_states_it() -> None:
    assert set(INSTALL_NUMBERS) | {"--lines"} == set(LIMITS)

    def shown(x: float) -> str:
        if x >= 2**20 and int(x) & (int(x) - 1) == 0:
            return f"2^{int(x).bit_length() - 1}"
        return str(int(x)) if x == int(x) else str(x)

    docs = " ".join(docs_text().split())
    for option, (low, high) in LIMITS.items():
        assert option in docs
        stated = f"to {shown(high)}" if option == "--backoff-max" else f"{shown(low)} to {shown(high)}"
        assert stated in docs, (option, stated)


@pytest.mark.parametrize("value", BAD_VALUES)
@pytest.mark.parametrize("option", INSTALL_NUMBERS)
def test_install_refuses_a_bad_number_and_installs_nothing(sandbox: Sandbox, option: str, value: str) -> None:
    name = sandbox.job("num")
    value = HUGE.get(option, "1e12") if value == "huge" else value
    proc = sandbox.ws("install", name, option, value, "--", "/bin/sleep", "1000", "bad-number-marker")
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and option in lines[0], proc.stderr
    assert f"#watchdog-singleton:{name}".encode() not in sandbox.crontab()
    assert not os.path.exists(os.path.join(sandbox.state_root, "jobs", f"{name}.json"))
    assert pids_with_arg("bad-number-marker", sandbox.user.uid) == []


@pytest.mark.parametrize("value", ["nan", "inf", "-1", "1e12"])
@pytest.mark.parametrize("option", ["--grace", "--settle"])
def test_run_refuses_a_bad_number_and_starts_nothing(sandbox: Sandbox, option: str, value: str) -> None:
    name = sandbox.job("num")
    proc = sandbox.ws("run", name, "--detach", option, value, "--", "/bin/sleep", "1000", "bad-number-marker")
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and f"{option} {value if value != '1e12' else '1000000000000'}" in lines[0], lines
    assert pids_with_arg("bad-number-marker", sandbox.user.uid) == []
    assert not os.path.exists(os.path.join(sandbox.state_root, "run", f"{name}.json"))


def test_install_names_the_range_in_its_refusal(sandbox: Sandbox) -> None:
    name = sandbox.job("num")
    proc = sandbox.ws("install", name, "--backoff-initial", "5", "--backoff-max", "2", "--", "/bin/sleep", "1000")
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("watchdog-singleton: --backoff-max 2: must be from --backoff-initial (5) "
                                   "to 86400")


@pytest.mark.parametrize("value", ["-5", "10000000"])
def test_logs_refuses_a_line_count_out_of_range(sandbox: Sandbox, value: str) -> None:
    name = sandbox.job("quiet")
    sandbox.ok("install", name, "--no-start", "--", "/bin/sleep", "1000")
    proc = sandbox.ws("logs", name, "-n", value)
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert proc.stderr.strip() == f"watchdog-singleton: -n {value}: must be from 0 to 1000000"


# --- the status table at a glance; the JSON keeps the numbers ---

def row(**over: Any) -> dict[str, Any]:
    info = {"name": "web", "running": False, "phase": "exited", "next_start_at": None, "installed": True,
            "enabled": True, "pid": None, "started_at": None, "restarts": 0, "last_exit_code": None,
            "schedule": "* * * * *", "command": ["/bin/true"], "cron_entry": "enabled", "periodic": False}
    info.update(over)
    return info


def test_last_exit_shows_a_signal_by_its_name() -> None:
    assert [exit_word(c) for c in (None, 0, 3, -15, -9)] == ["-", "0", "3", "SIGTERM", "SIGKILL"]
    shown = table([row(last_exit_code=-15)]).splitlines()[1]
    assert "SIGTERM" in shown and "-15" not in shown


def test_status_command_column_is_shell_quoted() -> None:
    shown = table([row(command=["/bin/sh", "-c", "echo a; b", ""])]).splitlines()[1]
    assert shown.endswith("/bin/sh -c 'echo a; b' ''")


# --- the front door: --version, completion, help in one style ---

def test_version_prints_the_installed_version(quiet_env: dict[str, str]) -> None:
    proc = cli("--version", env=quiet_env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"watchdog-singleton {importlib.metadata.version('watchdog-singleton')}\n"


def test_shell_completion_script_is_offered(quiet_env: dict[str, str]) -> None:
    proc = cli("--show-completion", env={**quiet_env, "SHELL": "/bin/bash"})
    assert proc.returncode == 0, proc.stderr
    assert "_WATCHDOG_SINGLETON_COMPLETE" in proc.stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_every_help_has_an_example_and_no_raw_types(quiet_env: dict[str, str], command: str) -> None:
    proc = cli(command, "--help", env=quiet_env)
    assert proc.returncode == 0, proc.stderr
    assert f"watchdog-singleton {command} " in proc.stdout.split("xample")[-1]
    for raw in ("<str>", "<list[", "<int>", "<float>", "{NAME}"):
        assert raw not in proc.stdout


def test_install_help_shows_one_truthful_default_for_every_and_timeout(quiet_env: dict[str, str]) -> None:
    proc = cli("install", "--help", env=quiet_env)
    assert proc.returncode == 0, proc.stderr
    lines: dict[str, str] = {}  # each option's help, its wrapped lines joined
    option = ""
    for line in proc.stdout.splitlines():
        if line.startswith("  --"):
            option = line.split()[0]
            lines[option] = line
        elif option and line.startswith("      "):
            lines[option] += " " + line.strip()
        else:
            option = ""
    assert "default min(3 periods, period + 1 h)" in lines["--timeout"]
    assert "default: none" in lines["--every"]
    for option in ("--timeout", "--every"):
        assert "[default: 0.0]" not in lines[option], lines[option]
