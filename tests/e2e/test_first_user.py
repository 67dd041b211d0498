"""What a first user of the README met: the mistakes a newcomer makes get one line that says
what to type instead, and no hint names something that does not exist."""

from __future__ import annotations

import os
import sys

import pytest
from conftest import Sandbox

from watchdog_singleton import paths
from watchdog_singleton.commands.importer import shown_line
from watchdog_singleton.errors import UserError
from watchdog_singleton.job.model import resolve_command

OUR_LINE = ("* * * * * test -O /tmp/ws-1 -a -f /tmp/ws-1/web.lock && /usr/bin/flock -n -E 75 /tmp/ws-1/web.lock "
            "true 2>/dev/null; [ $? = 75 ] || { cd / && exec /v/bin/python -I -m watchdog_singleton run --cron "
            "--state-dir /h/.local/state/watchdog-singleton/h web; } #watchdog-singleton:web")


def test_the_psycopg_hint_outside_pipx_names_this_interpreters_pip_not_an_unpublished_package(
        tmp_path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The package is installed from a checkout: `pip install 'watchdog-singleton[postgres]'`
    finds nothing on PyPI (or, one day, someone else's package)."""
    monkeypatch.setattr(sys, "prefix", str(tmp_path))  # a venv, not pipx's (no pipx_metadata.json)
    hint = paths.psycopg_hint()
    assert "watchdog-singleton[" not in hint
    assert hint == f"{sys.executable} -m pip install 'psycopg[binary]'"


def test_import_shows_our_own_lines_by_their_job_name() -> None:
    """Each of our lines is some 400 bytes of launcher: `import` listed them all in full."""
    assert shown_line(OUR_LINE.encode()) == "job web"
    assert shown_line(f"#disabled {OUR_LINE}".encode()) == "job web (disabled)"
    assert shown_line(b"* * * * * flock -n /tmp/a.lock ./a.sh") == "* * * * * flock -n /tmp/a.lock ./a.sh"


def test_a_program_in_the_working_folder_without_dot_slash_is_refused_saying_write_dot_slash(tmp_path: str) -> None:
    script = os.path.join(tmp_path, "sync.sh")
    with open(script, "w") as f:
        f.write("#!/bin/sh\n")
    os.chmod(script, 0o755)
    with pytest.raises(UserError) as exc:
        resolve_command(["sync.sh"], str(tmp_path), "/usr/bin:/bin")
    assert str(exc.value) == (f"program 'sync.sh' not found on PATH or not executable "
                              f"(sync.sh is in {tmp_path}: write ./sync.sh)")
    assert resolve_command(["./sync.sh"], str(tmp_path), "/usr/bin:/bin") == [script]
    with pytest.raises(UserError) as exc:  # a name found nowhere gets no such hint
        resolve_command(["no-such-program-here"], str(tmp_path), "/usr/bin:/bin")
    assert "write ./" not in str(exc.value)


def test_a_script_that_is_not_executable_is_named_by_its_clean_path_with_what_to_do(tmp_path: str) -> None:
    script = os.path.join(tmp_path, "noexec.sh")
    open(script, "w").close()
    with pytest.raises(UserError) as exc:
        resolve_command(["./noexec.sh"], str(tmp_path), "/usr/bin:/bin")
    assert str(exc.value).startswith(f"program {script} is not executable (chmod +x it")


@pytest.mark.parametrize("args,line", [
    (["--grace", "99999"], "--grace 99999: must be from 0 to 3600"),  # install's range
    (["--progress-every", "0"], "--progress-every 0: must be from 0.1 to 86400"),
    (["--progress-every", "nan"], "--progress-every nan: must be from 0.1 to 86400"),
    (["--task-timeout", "-5"], "--task-timeout -5: must be from 0 to 315360000"),
])
def test_farm_number_options_are_refused_outside_the_range_its_help_states(sandbox: Sandbox, args: list[str],
                                                                        line: str) -> None:
    listing = sandbox.path("tasks.txt")
    with open(listing, "w") as f:
        f.write("echo never >> out\n")
    os.chown(listing, sandbox.user.uid, sandbox.user.gid)
    before = sorted(os.listdir(sandbox.dir))
    proc = sandbox.ws("farm", listing, *args)
    assert (proc.returncode, proc.stderr) == (2, f"watchdog-singleton: {line}\n")
    assert sorted(os.listdir(sandbox.dir)) == before
    help_text = " ".join(sandbox.ok("farm", "run", "--help").stdout.split())
    assert f"{args[0]} " in help_text and line.split(" to ")[-1] in help_text  # the range is stated


def test_a_typo_in_a_job_name_names_the_installed_job(sandbox: Sandbox) -> None:
    name = sandbox.job("ingest")
    sandbox.ok("install", name, "--no-start", "--", "/bin/sleep", "1000")
    typo = name.replace("ingest", "ingset")
    for command in ("stop", "status", "logs", "uninstall", "start", "restart"):
        proc = sandbox.ws(command, typo)
        assert (proc.returncode, proc.stderr) == (4, f"watchdog-singleton: no such job: {typo} "
                                                     f"(did you mean {name}?)\n"), command
    proc = sandbox.ws("start", "zzzzzz")  # nothing close: the old advice
    assert (proc.returncode, proc.stderr) == (4, "watchdog-singleton: no such job: zzzzzz (install it first)\n")
