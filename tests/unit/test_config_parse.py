"""The jobs file (apply, export) parsed and checked without any user or crontab: its errors name
FILE:LINE, job and key; defaults, periods and exports as plain calls. (Real applies: tests/e2e/test_config.py.)"""

from __future__ import annotations

import re
from typing import Any

import pytest
from docskit import docs_text

from watchdog_singleton import config
from watchdog_singleton.commands.install import InstallRequest, needs_restart
from watchdog_singleton.job.model import Job


def parse(tmp_path: Any, text: str) -> config.ConfigFile:
    path = tmp_path / "jobs.toml"
    path.write_text(text)
    return config.load(str(path))


def refused(tmp_path: Any, text: str) -> str:
    with pytest.raises(config.ConfigError) as caught:
        parse(tmp_path, text)
    assert caught.value.exit_code == 2
    message = str(caught.value)
    assert message.startswith(f"{tmp_path / 'jobs.toml'}:"), message
    return message


def test_unknown_key_names_file_line_job_key_and_the_nearest_known_key(tmp_path: Any) -> None:
    message = refused(tmp_path, '[jobs.web]\ncommand = "sleep 1"\n\nperoid = 60\n')
    assert re.search(r"jobs\.toml:4: job web, key peroid: unknown key \(did you mean period\?\)$", message)


def test_unknown_key_in_defaults_is_refused_too(tmp_path: Any) -> None:
    message = refused(tmp_path, '[defaults]\ngrce = 5\n[jobs.web]\ncommand = "sleep 1"\n')
    assert "jobs.toml:2: [defaults], key grce: unknown key (did you mean grace?)" in message


def test_wrong_type_names_the_key_and_what_it_must_be(tmp_path: Any) -> None:
    message = refused(tmp_path, '[jobs.web]\ncommand = "sleep 1"\nenable = "yes"\n')
    assert "jobs.toml:3: job web, key enable: must be true or false" in message
    message = refused(tmp_path, '[jobs.web]\ncommand = "sleep 1"\nperiod = true\n')
    assert "jobs.toml:3: job web, key period: must be a number" in message
    message = refused(tmp_path, '[jobs.web]\ncommand = [1, 2]\n')
    assert "jobs.toml:2: job web, key command: must be a list of strings or a string" in message
    message = refused(tmp_path, '[jobs.web]\ncommand = "x"\n[jobs.web.env]\nA = 1\n')
    assert "jobs.toml:3: job web, key env: must be a table of strings" in message


def test_duplicate_job_is_reported_from_tomls_own_error(tmp_path: Any) -> None:
    message = refused(tmp_path, '[jobs.web]\ncommand = "a"\n\n[jobs.web]\ncommand = "b"\n')
    assert "jobs.toml:4: job web is defined twice" in message


def test_syntax_error_gives_tomls_line(tmp_path: Any) -> None:
    message = refused(tmp_path, '[jobs.web]\ncommand = "a"\ngrace = \n')
    assert "jobs.toml:3: TOML syntax error: " in message


def test_sync_true_without_a_cluster_is_a_clear_error_not_ignored(tmp_path: Any) -> None:
    from watchdog_singleton.commands.cluster import check_options
    from watchdog_singleton.errors import UserError

    cfg = parse(tmp_path, '[jobs.web]\ncommand = "a"\nperiod = 60\nsync = true\n')
    req = cfg.request(cfg.jobs[0])
    with pytest.raises(UserError) as caught:
        check_options(req.cluster, req.lease, req.standby, req.rotate, req.sync, {})  # what apply's build_job asks
    key, message = config.option_to_key(str(caught.value))
    assert str(cfg.error(cfg.jobs[0], key, message)).endswith(
        'jobs.toml:4: job web, key sync: sync = true is for cluster jobs: add cluster = "postgresql://USER@HOST/DB" '
        '(or set WATCHDOG_SINGLETON_CLUSTER)')


def test_period_makes_a_job_periodic_and_contradicting_it_is_an_error(tmp_path: Any) -> None:
    cfg = parse(tmp_path, '[jobs.add]\ncommand = "a"\nperiod = 240\n')
    req = cfg.request(cfg.jobs[0])
    assert req.every == 240 and not req.periodic  # build_job: periodic = periodic or every > 0
    message = refused(tmp_path, '[jobs.add]\ncommand = "a"\nperiod = 240\nperiodic = false\n')
    assert "jobs.toml:4: job add, key periodic:" in message


def test_unknown_top_level_key_is_refused(tmp_path: Any) -> None:
    message = refused(tmp_path, 'job = 1\n[jobs.web]\ncommand = "a"\n')
    assert "jobs.toml:1: unknown top-level key 'job'" in message


def test_a_job_without_command_is_refused_at_its_header(tmp_path: Any) -> None:
    message = refused(tmp_path, '\n[jobs.web]\ngrace = 5\n')
    assert "jobs.toml:2: job web: no command" in message


def test_defaults_are_inherited_env_merges_and_arguments_are_appended(tmp_path: Any) -> None:
    cfg = parse(tmp_path, '[defaults]\ngrace = 3\nenv = {A = "1", B = "2"}\nworkdir = "sub"\n'
                          '[jobs."web.1"]\ncommand = "python3 -u d.py"\narguments = ["--port", "80"]\n'
                          'env = {B = "3"}\n')
    spec = cfg.jobs[0]
    req = cfg.request(spec)
    assert spec.name == "web.1" and spec.line == 5
    assert req.command == ["python3", "-u", "d.py", "--port", "80"]
    assert req.grace == 3 and sorted(req.env) == ["A=1", "B=3"]
    assert req.workdir == str(tmp_path / "sub")  # relative paths from the file's folder
    assert config.config_error(cfg.path, spec, "grace", "bad").args[0].endswith(
        "jobs.toml:2: job web.1, key grace (from [defaults]): bad")


def test_install_messages_are_told_in_the_files_words() -> None:
    assert config.option_to_key("--every 0.5: must be 0, or from 1 to 31622400") == (
        "period", "period 0.5: must be 0, or from 1 to 31622400")
    assert config.option_to_key("--timeout is for periodic jobs: add --periodic (or --every SECONDS)") == (
        "timeout", "timeout is for periodic jobs: add periodic = true (or period = SECONDS)")
    assert config.option_to_key("program 'nope' not found on PATH or not executable")[0] == "command"
    assert config.option_to_key("schedule '61 * * * *' is not a valid cron expression")[0] == "schedule"


def test_every_install_option_has_a_key() -> None:
    targets = {target for target, _ in config.KEYS.values() if target}
    fields = set(InstallRequest.__dataclass_fields__) - {"name", "start", "applied_from"}
    assert fields == targets


def test_export_writes_what_parses_back_to_the_same_request(tmp_path: Any) -> None:
    job = Job(name="add", command=["/bin/echo", "a b", "%"], workdir="/srv", periodic=True, every=240.0,
              timeout=600.0, env={"PATH": "/usr/bin", "X": "y z"}, grace=2.5, enabled=False,
              stdout_log="/logs/add.stdout.log", stderr_log="/logs/add.stderr.log", lock_dir="/tmp/lk")
    text = config.dump([job], "/default/logs", "/tmp/lk")
    cfg = parse(tmp_path, text)
    req = cfg.request(cfg.jobs[0])
    assert not cfg.jobs[0].enable
    assert (req.command, req.workdir, req.every, req.timeout, req.grace, req.log_dir) == (
        job.command, "/srv", 240, 600, 2.5, "/logs")
    assert sorted(req.env) == ["PATH=/usr/bin", "X=y z"] and req.lock_dir is None


def test_only_command_env_workdir_lock_and_kind_need_a_restart() -> None:
    old = Job(name="a", command=["/bin/sleep", "1"], workdir="/", lock_dir="/tmp/l")
    for change, restart in (({"grace": 3.0}, False), ({"schedule": "*/5 * * * *"}, False),
                            ({"restart": "never"}, False), ({"stdout_log": "/x"}, False),
                            ({"command": ["/bin/sleep", "2"]}, True), ({"env": {"A": "1"}}, True),
                            ({"workdir": "/tmp"}, True), ({"lock_dir": "/tmp/m"}, True)):
        new = Job.from_dict({**old.to_dict(), **change})
        assert needs_restart(old, new) is restart, change


def test_the_readme_example_parses_to_ten_jobs_eight_periodic_one_disabled(tmp_path: Any) -> None:
    example = re.search(r"```toml\n(# /srv/panda/jobs.toml.*?)```", docs_text(), re.S)
    assert example, "the documented jobs.toml example (docs/periodic-and-config.md) is gone"
    cfg = parse(tmp_path, example.group(1))
    requests = [cfg.request(spec) for spec in cfg.jobs]
    assert len(requests) == 10
    assert sum(r.periodic or r.every > 0 for r in requests) == 8
    assert [s.name for s in cfg.jobs if not s.enable] == ["pilot_streaming"]
    server = requests[-1]
    assert server.command[-2:] == ["--port", "25080"] and "CACHE_SIZE=512M" in server.env
    assert "PANDA_HOME=/srv/panda" in server.env and server.log_dir == str(tmp_path / "logs")
