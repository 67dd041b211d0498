"""One option schema (watchdog_singleton/job/options.py): install's and submit's typer options, the
TOML keys, the ranges, the defaults of InstallRequest, Job and export, and the docs' option tables
all say what the schema says; a build_job error names the option it is about, and apply points at
the file's line for it from that field, not from the message's words."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from types import SimpleNamespace
from typing import Any

import pytest
from docskit import ROOT

from watchdog_singleton import config
from watchdog_singleton.commands.install import InstallRequest, build_job
from watchdog_singleton.commands.submit import SubmitRequest
from watchdog_singleton.errors import UserError
from watchdog_singleton.job import options
from watchdog_singleton.job.model import LIMITS, RESTART_FIELDS, Job
from watchdog_singleton.job.options import INSTALL, OPTIONS, RUN, SUBMIT


def table_rows(path: str, header: str) -> list[list[str]]:
    """The rows of the markdown table whose header line starts with `header`, as cells."""
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        text = f.read()
    lines = text.splitlines()
    start = text[:text.index(header)].count("\n")  # the header line (`header` may span lines)
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = re.split(r"(?<!\\)\|", line.strip().strip("|"))
        rows.append([cell.strip() for cell in cells])
    return rows


def plain(cell: str) -> str:
    """A cell's text as read: links by their text, no backticks, no quotes."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", cell)
    return text.replace("`", "").replace('"', "").replace("\\|", "|").strip()


def number_range(opt: options.Option) -> str:
    """"0 to 3600", "--backoff-initial to 86400": how every table and help states a range."""
    low = opt.low_from or options.number_text(opt.low or 0)
    return f"{low} to {options.number_text(opt.high or 0)}"


def test_install_request_takes_every_install_option_with_the_schemas_default() -> None:
    fields = InstallRequest.__dataclass_fields__
    names = {opt.name for opt in options.for_command(INSTALL)}
    assert set(fields) - {"name", "command", "start", "applied_from"} == names
    for opt in options.for_command(INSTALL):
        default = fields[opt.name].default
        if opt.unset or opt.default is None or opt.kind in ("env", "hook"):
            continue  # None or a list until given
        assert default == opt.default, opt


def test_submit_request_and_job_default_as_the_schema_says() -> None:
    fields = SubmitRequest.__dataclass_fields__
    for opt in options.for_command(SUBMIT):
        assert opt.name in fields, opt
        if not opt.unset and opt.kind not in ("hook",):
            assert fields[opt.name].default == opt.default, opt
    job_defaults = dict(Job.FIELDS)
    for opt in OPTIONS.values():
        if opt.name in job_defaults and opt.default is not None and not opt.unset:
            assert job_defaults[opt.name] == opt.default, opt


def test_ranges_keys_and_restart_fields_come_from_the_schema() -> None:
    assert {flag for flag in LIMITS if flag != "--lines"} == {o.flag for o in OPTIONS.values() if o.high is not None}
    assert set(RESTART_FIELDS) == {"command"} | {o.name for o in OPTIONS.values() if o.restarts}
    assert {key for key, (target, _) in config.KEYS.items() if target} == {"command"} | {
        o.key for o in OPTIONS.values() if o.key}
    assert config.KEYS["period"] == ("every", "number")


def test_the_install_table_in_the_docs_states_each_options_default_and_range() -> None:
    rows = table_rows("docs/commands.md", "| option | default | meaning |")
    seen = set()
    for opt in options.for_command(INSTALL):
        row = next((r for r in rows if f"`{opt.flag} " in r[0] or f"`{opt.flag}`" in r[0]), None)
        assert row is not None, f"{opt.flag} has no row in the install table of docs/commands.md"
        seen.add(opt.flag)
        if opt.shown:
            assert plain(row[1]).startswith(opt.shown), (opt.flag, row[1], opt.shown)
        else:
            assert plain(row[1]) == "", (opt.flag, row[1])
        if opt.high is not None:
            assert number_range(opt) in plain(row[2]), (opt.flag, number_range(opt), row[2])
    flags = {re.match(r"`(--[a-z-]+)", r[0]).group(1) for r in rows}  # type: ignore[union-attr]
    assert flags - seen == {"--no-start"}, "a row for an option the schema does not know"


def test_the_run_table_in_the_docs_states_each_run_options_range() -> None:
    rows = table_rows("docs/commands.md", "| option | default | meaning |\n|---|---|---|\n| `--detach`")
    for opt in options.for_command(RUN):
        row = next((r for r in rows if f"`{opt.flag} " in r[0] or f"`{opt.flag}`" in r[0]), None)
        assert row is not None, f"{opt.flag} has no row in the run table of docs/commands.md"
        if opt.high is not None:
            assert number_range(opt) in plain(row[2]), (opt.flag, row[2])
            assert plain(row[1]) == opt.shown, (opt.flag, row[1])


def test_the_key_table_in_the_docs_names_every_key_its_option_and_default() -> None:
    rows = table_rows("docs/periodic-and-config.md", "| key | type | install option | default |")
    kinds = {"bool": "bool", "number": "seconds", "int": "integer", "path": "path", "str": "string",
             "env": "table", "hook": "string", "argv": "list", "list": "list"}
    for key, (target, kind) in config.KEYS.items():
        row = next((r for r in rows if f"`{key}`" in r[0]), None)
        assert row is not None, f"key {key} has no row in docs/periodic-and-config.md"
        assert kinds[kind] in row[1] or kind == "str", (key, row[1])
        opt = OPTIONS.get(target)
        if opt is None:
            continue
        assert opt.flag in row[2] or "of the same name" in row[2], (key, row[2])
        if "," in row[0] or "as for install" in row[3]:
            continue  # several keys in one row: their defaults are the install table's
        want = {True: "true", False: "false"}.get(opt.default, opt.shown) if opt.kind == "bool" else opt.shown
        assert plain(row[3]).startswith(want or ("none", "{}", "[]")), (key, row[3], want)


def test_install_help_says_each_options_range_and_default_once() -> None:
    proc = subprocess.run([sys.executable, "-m", "watchdog_singleton", "install", "--help"], capture_output=True,
                          text=True, env={**os.environ, "COLUMNS": "80"}, timeout=60)
    assert proc.returncode == 0, proc.stderr
    helps: dict[str, str] = {}
    option = ""
    for line in proc.stdout.splitlines():
        if line.startswith("  --"):
            option = line.split()[0]
            helps[option] = line.split(None, 1)[1] if " " in line.strip() else ""
        elif option and line.startswith("      "):
            helps[option] += line.strip()
        else:
            option = ""
    squeezed = {flag: "".join(text.split()) for flag, text in helps.items()}  # wrapping splits at - too
    for opt in options.for_command(INSTALL):
        text = squeezed[opt.flag]
        assert "".join(opt.help_text(INSTALL).split()) in text, (opt.flag, helps[opt.flag])
        if opt.high is not None:
            assert "".join(number_range(opt).split()) in text, opt.flag
        assert text.count("default") <= 1 and "[default:" not in text, (opt.flag, helps[opt.flag])
        if opt.shown:
            assert f"(default{''.join(opt.shown.split())})" in text, (opt.flag, helps[opt.flag])


def test_submit_help_takes_the_shared_options_from_the_schema() -> None:
    proc = subprocess.run([sys.executable, "-m", "watchdog_singleton", "submit", "--help"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    squeezed = "".join(proc.stdout.split())
    for opt in options.for_command(SUBMIT):
        assert "".join(opt.help_text(SUBMIT).split()) in squeezed, opt.flag


# --- a user error carries its field; apply points at that key's line ---

def build_failure(tmp_path: Any, text: str) -> tuple[config.ConfigFile, UserError]:
    path = tmp_path / "jobs.toml"
    path.write_text(text)
    cfg = config.load(str(path))
    ctx = SimpleNamespace(root=str(tmp_path / "state"), jobs=SimpleNamespace(load=lambda *a, **k: None))
    with pytest.raises(UserError) as caught:
        build_job(cfg.request(cfg.jobs[0]), ctx, {"PATH": "/usr/bin:/bin"})  # type: ignore[arg-type]
    return cfg, caught.value


@pytest.mark.parametrize("lines,field,key,line", [
    ('grace = 5\nstdout_log = "no/such/dir/out.log"\n', "stdout_log", "stdout_log", 4),
    ('period = 60\nsync = true\n', "sync", "sync", 4),
    ('period = 0.5\n', "every", "period", 3),
    ('max_lifetime = 100\nperiod = 60\n', "max_lifetime", "max_lifetime", 3),
    ('restart = "sometimes"\n', "restart", "restart", 3),
    ('env = {X = "a"}\non_failure = ""\n', "on_failure", "on_failure", 4),
    ('env = {X = "a"}\narguments = ["%s"]\n' % ("x" * 140000), "command", "command", 2),
])
def test_a_build_error_names_its_field_and_apply_says_that_keys_line(
        tmp_path: Any, monkeypatch: Any, lines: str, field: str, key: str, line: int) -> None:
    monkeypatch.delenv("WATCHDOG_SINGLETON_CLUSTER", raising=False)
    cfg, exc = build_failure(tmp_path, f'[jobs.web]\ncommand = "/bin/true"\n{lines}')
    assert exc.field == field, (exc.field, str(exc))
    message = str(config.error_of(cfg.path, cfg.jobs[0], exc))
    assert message.startswith(f"{cfg.path}:{line}: job web, key {key}: "), message
    assert "--" not in message.split(": ", 2)[2], message  # told in the file's words


def test_a_range_error_names_its_field() -> None:
    from watchdog_singleton.job.model import check_limit

    with pytest.raises(UserError) as caught:
        check_limit("--backoff-max", 0.5, low=("--backoff-initial", 1.0))
    assert caught.value.field == "backoff_max"


def test_run_takes_the_shared_options_with_their_ranges_and_says_so_in_its_help() -> None:
    from watchdog_singleton.tick import runargs

    for opt in options.for_command(RUN):
        assert opt.flag in (runargs.FLAGS if opt.kind == "bool" else runargs.VALUES), opt.flag
        assert f"  {opt.flag}" in runargs.HELP, opt.flag
        if opt.high is not None:
            assert opt.flag in runargs.NUMBERS
            assert number_range(opt) in runargs.HELP, opt.flag
    with pytest.raises(UserError, match="--lease 1: must be from 5 to 86400"):
        runargs.parse(["web", "--lease", "1", "--", "x"])


def test_apply_help_lists_every_key_of_the_file() -> None:
    proc = subprocess.run([sys.executable, "-m", "watchdog_singleton", "apply", "--help"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    listed = " ".join(proc.stdout.split()).split("Keys: ")[1]
    for key in config.KEYS:
        assert re.search(rf"\b{key}\b", listed), key


SAMPLES: dict[str, Any] = {"schedule": "0 * * * *", "restart": "never", "catch_up": "once", "mail": "a@example.org",
                           "cluster": "postgresql://u@db.invalid/jobs", "workdir": "/elsewhere",
                           "lock_dir": "/tmp/elsewhere", "stdout_log": "/o/out.log", "stderr_log": "/o/err.log",
                           "env": {"X": "1"}, "on_failure": ["/bin/true"]}


@pytest.mark.parametrize("opt", [o for o in OPTIONS.values() if o.key and o.name in dict(Job.FIELDS)],
                         ids=lambda o: o.name)
def test_export_writes_every_key_of_the_schema_that_differs_from_its_default(opt: options.Option,
                                                                             monkeypatch: Any) -> None:
    monkeypatch.delenv("WATCHDOG_SINGLETON_CLUSTER", raising=False)
    base = {"name": "web", "command": ["/bin/true"], "workdir": "/srv", "lock_dir": "/tmp/lk",
            "stdout_log": "/d/web.stdout.log", "stderr_log": "/d/web.stderr.log"}
    if opt.kind == "bool":
        value: Any = not opt.default
    elif opt.kind in ("number", "int"):
        value = (opt.high or 100) - 1
    else:
        value = SAMPLES[opt.name]
    extra = {"lease": {"cluster": SAMPLES["cluster"]}, "every": {"periodic": True}}.get(opt.name, {})
    plain_job = Job.from_dict({**base, **extra})
    job = Job.from_dict({**base, **extra, opt.name: value})
    if opt.name != "workdir":  # written always when no file's folder is its default
        assert opt.key not in config.job_table(plain_job, "/d", "/tmp/lk")
    assert opt.key in config.job_table(job, "/d", "/tmp/lk"), opt.key
