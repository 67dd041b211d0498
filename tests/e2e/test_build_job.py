"""One build of a job (watchdog_singleton/job/build.py) behind every way a job is made: install,
apply (a [jobs.NAME] table), import (an old crontab line), run NAME -- COMMAND (the tick's ad-hoc
run) and submit (a batch chain). The same options give the same Job, and the same bad option is
refused by each with the same one-line message (apply's at the key's line, in the file's words)
and exit 2."""

from __future__ import annotations

import os
import pwd
import subprocess
from typing import Any, Callable

import pytest
from conftest import Sandbox

from watchdog_singleton import config
from watchdog_singleton.commands import apply, importer, install
from watchdog_singleton.commands.common import Context
from watchdog_singleton.commands.install import InstallRequest
from watchdog_singleton.commands.submit import SubmitRequest, build_spec, submit_job
from watchdog_singleton.cron.crontab import CrontabIO
from watchdog_singleton.cron.oldlines import Proposal, scan
from watchdog_singleton.errors import USAGE, UserError
from watchdog_singleton.job import build, options
from watchdog_singleton.job.model import SNAPSHOT_ENV, Job, JobStore
from watchdog_singleton.state.store import StateStore
from watchdog_singleton.tick import launch, runargs

# Set only where a command makes it so: install dates its definition, a batch chain's lock is on its node.
DATED = ("installed_at",)
NO_LOCK = DATED + ("lock_dir",)


@pytest.fixture
def world(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """A state folder, a working folder, a log folder and a lock folder (the default one too); a
    shell environment with a PATH and a LANG to keep, and no cluster."""
    for key in SNAPSHOT_ENV + ("WATCHDOG_SINGLETON_CLUSTER",):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    monkeypatch.setenv("LANG", "C.UTF-8")
    places = {name: str(tmp_path / name) for name in ("state", "work", "logs", "locks")}
    for folder in places.values():
        os.makedirs(folder)
    monkeypatch.setenv("WATCHDOG_SINGLETON_LOCK_DIR", places["locks"])  # no default folder made under /tmp
    monkeypatch.chdir(places["work"])
    return places


def context(root: str) -> Context:
    return Context(root=root, jobs=JobStore(root), states=StateStore(root))


# The options every one of the four commands takes, as each spells them.
ARGV = ["--workdir", "{work}", "--grace", "4.5", "--cluster", "none"]
TOML = 'workdir = "{work}"\ngrace = 4.5\ncluster = "none"\n'
KWARGS: dict[str, Any] = {"grace": 4.5, "cluster": "none"}
COMMAND = ["sleep", "100"]


def by_install(w: dict[str, str], **extra: Any) -> Job:
    req = InstallRequest(name="web", command=list(COMMAND), workdir=w["work"], **KWARGS, **extra)
    return install.build_job(req, context(w["state"]), dict(os.environ))


def by_apply(w: dict[str, str], extra: str = "") -> Job:
    path = os.path.join(w["work"], "jobs.toml")
    with open(path, "w") as f:
        f.write(f'[jobs.web]\ncommand = {COMMAND!r}\n'.replace("'", '"') + TOML.format(**w) + extra)
    steps = apply.make_plan(config.load(path), context(w["state"]), dict(os.environ), b"")
    assert steps[0].job is not None
    return steps[0].job


def by_run(w: dict[str, str], *extra: str) -> Job:
    argv = ["web", *(a.format(**w) for a in ARGV), "--restart", "always", *extra, "--", *COMMAND]
    return launch.adhoc_job(runargs.parse(argv), w["state"])


def by_submit(w: dict[str, str]) -> Job:
    req = SubmitRequest(name="web", command=list(COMMAND), scheduler="slurm", workdir=w["work"], dry_run=True,
                        **KWARGS)
    return submit_job(req, context(w["state"]), dict(os.environ))


def fields(job: Job, leave_out: tuple[str, ...]) -> dict[str, Any]:
    return {key: value for key, value in job.to_dict().items() if key not in leave_out}


def test_install_apply_run_and_submit_make_the_same_job(world: dict[str, str]) -> None:
    installed = by_install(world, log_dir=world["logs"], lock_dir=world["locks"])
    assert installed.command == ["/usr/bin/sleep", "100"] and installed.grace == 4.5
    assert installed.env == {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}  # kept from the shell, for cron
    applied = by_apply(world, f'log_dir = "{world["logs"]}"\nlock_dir = "{world["locks"]}"\n')
    ran = by_run(world, "--log-dir", world["logs"], "--lock-dir", world["locks"])
    assert fields(applied, DATED + ("applied_from",)) == fields(installed, DATED + ("applied_from",))
    assert fields(ran, DATED) == fields(installed, DATED)
    # A chain's job: its logs in the state folder's logs/, as install's default; its lock on the node.
    assert fields(by_submit(world), NO_LOCK) == fields(by_install(world), NO_LOCK)


def test_a_batch_chain_runs_the_job_its_build_made(world: dict[str, str]) -> None:
    req = SubmitRequest(name="web", command=list(COMMAND), scheduler="slurm", workdir=world["work"],
                        dry_run=True, grace=4.5, cluster="none")
    job = submit_job(req, context(world["state"]), dict(os.environ))
    _, spec = build_spec(req, context(world["state"]))
    for key in ("name", "command", "workdir", "env", "grace", "lease", "standby", "rotate", "on_failure", "mail",
                "notify_every", "stdout_log", "stderr_log"):
        assert getattr(spec, key) == getattr(job, key), key


def test_an_imported_line_becomes_the_job_install_makes_of_its_options(world: dict[str, str]) -> None:
    out = os.path.join(world["logs"], "web.log")
    line = f"* * * * * flock -n /tmp/web.lock sleep 100 >> {out} 2>&1\n"
    (proposal,) = scan(line.encode(), world["work"], pwd.getpwuid(os.getuid()).pw_name, set())  # from HOME
    assert isinstance(proposal, Proposal) and proposal.keep_alive
    imported = install.build_job(importer.request_for(proposal), context(world["state"]),
                                 importer.cron_environ(proposal))  # what import does with each line
    req = InstallRequest(name=proposal.name, command=list(COMMAND), workdir=world["work"], stdout_log=out,
                         stderr_log=out)
    cron_shell = {"PATH": "/usr/bin:/bin"}  # the environment the line ran in: cron's, not this shell's
    assert importer.cron_environ(proposal) == cron_shell
    assert fields(imported, DATED) == fields(install.build_job(req, context(world["state"]), cron_shell), DATED)


def test_every_entry_point_builds_through_the_one_build(world: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """No second copy: install, apply, run, submit and import each build through job.build.build_job
    (seen by a spy on it; import reads a crontab of one flock line and changes nothing)."""
    calls: list[str] = []
    real = build.build_job

    def spy(request: Any, root: str, environ: dict[str, str], **kw: Any) -> Job:
        calls.append(kw.get("command", options.INSTALL))
        return real(request, root, environ, **kw)

    monkeypatch.setattr(build, "build_job", spy)
    import watchdog_singleton.commands.submit as submit_module

    monkeypatch.setattr(submit_module, "build_job", spy)
    by_install(world)
    by_apply(world)
    by_run(world)
    by_submit(world)
    line = b"* * * * * flock -n /tmp/web.lock sleep 100\n"
    ctx = context(world["state"])
    ctx.crontab_io = CrontabIO("crontab", run=lambda argv, **_: subprocess.CompletedProcess(argv, 0, line, b""))
    assert importer.import_lines(ctx, lambda _: None, lambda _: None, apply=False) == 0
    assert calls == ["install", "install", "run", "submit", "install"]


# --- the same bad input, refused the same way by each ---------------------------------------------

BAD = [
    # (install/run/submit's option, its value, apply's key and TOML value, the message)
    ("--grace", "4000", "grace", "4000", "--grace 4000: must be from 0 to 3600"),
    ("--grace", "nan", "grace", "nan", "--grace nan: must be from 0 to 3600"),
    ("--lease", "30", "lease", "30", "--lease is for cluster jobs: add --cluster postgresql://USER@HOST/DB "
                                     "(or set WATCHDOG_SINGLETON_CLUSTER)"),
    ("--cluster", "postgresql://me:secret@db/x", "cluster", '"postgresql://me:secret@db/x"',
     "cluster 'postgresql://me@db/x': a password in the URL would be written in clear to the crontab and our "
     "files; put it in ~/.pgpass (or PGPASSFILE, or a pg_service.conf)"),
]


def refusal(attempt: Callable[[], Any], key: str) -> str:
    """The one line `attempt` is refused with; it is a usage error (exit 2) about option `key`."""
    with pytest.raises(UserError) as caught:
        attempt()
    assert caught.value.exit_code == USAGE
    assert caught.value.field == key, (caught.value.field, str(caught.value))
    return str(caught.value)


def in_process_refusals(w: dict[str, str], flag: str, value: str, key: str, toml: str) -> dict[str, str]:
    """The message each entry point raises (apply's: in the file's words, at the key's line)."""
    given: dict[str, Any] = {key: float(value) if flag in ("--grace", "--lease") else value}
    ctx = context(w["state"])
    install_req = InstallRequest(name="web", command=list(COMMAND), **given)
    submit_req = SubmitRequest(name="web", command=list(COMMAND), scheduler="slurm", dry_run=True, **given)
    path = os.path.join(w["work"], "jobs.toml")
    with open(path, "w") as f:
        f.write(f'[jobs.web]\ncommand = "sleep 100"\n{key} = {toml}\n')
    cfg = config.load(path)
    messages = {
        "install": refusal(lambda: install.build_job(install_req, ctx, dict(os.environ)), key),
        "run": refusal(lambda: launch.adhoc_job(runargs.parse(["web", flag, value, "--", *COMMAND]), w["state"]),
                       key),
        "submit": refusal(lambda: submit_job(submit_req, ctx, dict(os.environ)), key),
    }
    with pytest.raises(UserError) as caught:
        apply.make_plan(cfg, ctx, dict(os.environ), b"")
    assert caught.value.exit_code == USAGE
    messages["apply"] = str(caught.value)
    return messages


@pytest.mark.parametrize("flag,value,key,toml,message", BAD, ids=[f"{b[0]} {b[1]}" for b in BAD])
def test_the_same_bad_option_is_refused_the_same_way_by_each_entry_point(
        world: dict[str, str], flag: str, value: str, key: str, toml: str, message: str) -> None:
    messages = in_process_refusals(world, flag, value, key, toml)
    for name in ("install", "run", "submit"):
        assert messages[name] == message, (name, messages[name])
    # apply: the file, the key's line, and the same words with the option told as the file's key
    assert messages["apply"] == f"{world['work']}/jobs.toml:3: job web, key {key}: " + \
        config.in_file_words(messages["install"])


@pytest.mark.parametrize("flag,value,key,toml,message", BAD, ids=[f"{b[0]} {b[1]}" for b in BAD])
def test_the_cli_says_the_same_one_line_and_exits_2(sandbox: Sandbox, flag: str, value: str, key: str, toml: str,
                                                    message: str) -> None:
    """Through the real command lines, as the test user: one line on stderr, exit 2, no crontab."""
    path = sandbox.path("jobs.toml")
    with open(path, "w") as f:
        f.write(f'[jobs.web]\ncommand = "/bin/sleep 100"\n{key} = {toml}\n')
    os.chmod(path, 0o644)
    env = sandbox.env()
    lines = {}
    for name, args in (("install", ["install", "web", flag, value, "--", "/bin/sleep", "100"]),
                       ("run", ["run", "web", flag, value, "--", "/bin/sleep", "100"]),
                       ("submit", ["submit", "web", "--scheduler", "slurm", "--dry-run", flag, value, "--",
                                   "/bin/sleep", "100"]),
                       ("apply", ["apply", path])):
        proc = sandbox.ws(*args, env=env)
        assert proc.returncode == 2, (name, proc.returncode, proc.stderr)
        assert proc.stdout == "" and len(proc.stderr.splitlines()) == 1, (name, proc.stdout, proc.stderr)
        lines[name] = proc.stderr.rstrip("\n")
    for name in ("install", "run", "submit"):
        assert lines[name] == f"watchdog-singleton: {message}", (name, lines[name])
    assert lines["apply"] == f"watchdog-singleton: {path}:3: job web, key {key}: {config.in_file_words(message)}"
    assert sandbox.crontab() == b""


def test_a_program_not_found_is_refused_alike_by_all_five(sandbox: Sandbox) -> None:
    """The command's resolution on PATH is one check: install, apply, import (a named line), run, submit."""
    missing = "no-such-program-xyz"
    message = f"program '{missing}' not found on PATH or not executable"
    path = sandbox.path("jobs.toml")
    with open(path, "w") as f:
        f.write(f'[jobs.web]\ncommand = "{missing}"\n')
    os.chmod(path, 0o644)
    # A schedule cron never fires mid-test (the line's program does not exist).
    sandbox.set_crontab(f"0 0 1 1 * flock -n /tmp/web-{sandbox.tag}.lock {missing}\n".encode())
    tab = sandbox.crontab()
    for name, args, want in (
            ("install", ["install", "web", "--", missing], message),
            ("run", ["run", "web", "--", missing], message),
            ("submit", ["submit", "web", "--scheduler", "slurm", "--dry-run", "--", missing], message),
            ("apply", ["apply", path], f"{path}:2: job web, key command: {message}"),
            ("import", ["import", "--apply", "--line", "1"], f"--line 1 cannot be taken over: {message}")):
        proc = sandbox.ws(*args)
        assert proc.returncode == 2, (name, proc.returncode, proc.stderr)
        assert proc.stderr == f"watchdog-singleton: {want}\n", (name, proc.stderr)
    assert sandbox.crontab() == tab
    sandbox.set_crontab(b"")
