"""export: write this host's jobs (all, or NAME...) as a file that `apply` takes back unchanged.

`export --into FILE` updates the user's own file instead of printing a new one: a job whose table
already gives it back is left exactly as written (comments, order, string or list commands,
relative paths, keys it inherits from [defaults]); a table that no longer matches gets only the
keys that changed; an installed job the file lacks is appended as a table of the keys that differ
from the defaults in effect; a table whose job is no longer installed is removed (exporting all
jobs only), so the file describes the host. tomlkit keeps the rest of the file byte for byte; it
is imported here only, never by the tick or the supervisor.
"""

from __future__ import annotations

import os
import shlex
from typing import Any, Optional

from .. import config, paths
from ..envvars import LOCK_DIR_ENV
from ..errors import FAILED, OK, UserError
from ..files import write_atomic
from ..job.model import Job, check_name
from .common import Context, Echo

# A Job field that differs -> the keys of a table that decide it.
FIELD_KEYS = {"command": ("command", "arguments"), "every": ("period", "periodic"), "periodic": ("period", "periodic"),
              "enabled": ("enable",), "stdout_log": ("log_dir", "stdout_log", "stderr_log"),
              "stderr_log": ("log_dir", "stdout_log", "stderr_log"), "cluster": ("cluster", "lease")}
IGNORED = ("installed_at", "applied_from")  # bookkeeping; apply keeps the installed ones


def _lock_default() -> str:
    """The lock folder a file need not name: our own default folders are left out of it
    (lock.is_own_default); a folder set by WATCHDOG_SINGLETON_LOCK_DIR is the default of the
    shell that exports."""
    return os.path.abspath(os.environ[LOCK_DIR_ENV]) if os.environ.get(LOCK_DIR_ENV) else ""


def export(names: list[str], ctx: Context, echo: Echo, into: Optional[str] = None, warn: Optional[Echo] = None,
           environ: Optional[dict[str, str]] = None) -> int:
    chosen = [check_name(name) for name in names] or sorted(ctx.jobs.names())
    jobs = [ctx.jobs.get(name) for name in chosen]  # an unknown NAME: exit 4 before anything is printed
    environ = dict(os.environ) if environ is None else environ
    if into is None:
        echo(config.dump(jobs, paths.default_log_dir(ctx.root), _lock_default(), environ).rstrip("\n"))
        return OK
    return export_into(into, jobs, not names, ctx, echo, warn or echo, environ)


def export_into(path: str, jobs: list[Job], every_job: bool, ctx: Context, echo: Echo, warn: Echo,
                environ: dict[str, str]) -> int:
    _check_link(path)
    target = os.path.realpath(path)  # a symlinked file (dotfiles) is updated where it lives
    if not os.path.exists(target):
        text = config.dump(jobs, paths.default_log_dir(ctx.root), _lock_default(), environ)
        umask = os.umask(0o022)
        os.umask(umask)
        _write(target, text, 0o666 & ~umask)
        echo(f"{path}: written, {len(jobs)} job(s)")
        return OK
    cfg = config.load(target)  # a file apply would refuse: exit 2, nothing written
    with open(target, encoding="utf-8") as fh:
        text = fh.read()
    import tomlkit

    try:
        doc = tomlkit.parse(text)
    except Exception as exc:  # tomlkit's and tomllib's grammars differ at the edges
        raise UserError(f"{target}: cannot be edited in place ({exc}); export > NEW_FILE writes a new one") from None
    defaults = doc.get("defaults", {})
    defaults = defaults.unwrap() if hasattr(defaults, "unwrap") else dict(defaults)
    folder = os.path.dirname(target)
    specs = {spec.name: spec for spec in cfg.jobs}
    installed = {job.name: job for job in jobs}
    log_dir, lock_dir = paths.default_log_dir(ctx.root), _lock_default()
    report: list[str] = []
    for name, spec in specs.items():
        job = installed.get(name)
        if job is None:
            continue
        fields = _differing(job, _built(cfg, spec, ctx, environ))
        if fields:
            wanted = config.job_table(job, log_dir, lock_dir, environ, defaults, folder)
            _update(doc["jobs"][name], job, wanted, fields, environ, defaults)
            report.append(f"updated {name} ({', '.join(fields)})")
    removed = sorted(set(specs) - set(installed)) if every_job else []
    where = config.scan_lines(text)
    lines = text.splitlines()
    for name in removed:
        line = where.get(("jobs", name), 0)
        if not (line and config._HEADER_RE.match(lines[line - 1])):  # not a [jobs.NAME] header: inline
            del doc["jobs"][name]
    new_text = _without_tables(doc.as_string(), removed)
    added = [job for job in jobs if job.name not in specs]
    if added:
        tables = {job.name: _table(config.job_table(job, log_dir, lock_dir, environ, defaults, folder))
                  for job in added}
        block = tomlkit.dumps({"jobs": tables})
        new_text = new_text.rstrip("\n") + "\n\n" + block if new_text.strip() else block
        report.extend(f"added {job.name}" for job in added)
    report.extend(f"removed {name} (not installed here)" for name in removed)
    if new_text == text:
        echo(f"{path}: unchanged")
        return OK
    _check_round_trip(new_text, target, jobs, ctx, environ, warn)
    _write(target, new_text, os.stat(target).st_mode & 0o7777)
    echo(f"{path}: " + "; ".join(report))
    return OK


def _built(cfg: config.ConfigFile, spec: config.JobSpec, ctx: Context, environ: dict[str, str]) -> Optional[Job]:
    """The job apply would make of `spec`; None when it could not (then every key is rewritten)."""
    from .install import build_job

    try:
        job = build_job(cfg.request(spec), ctx, environ)
    except UserError:
        return None
    job.enabled = spec.enable
    return job


def _differing(job: Job, built: Optional[Job]) -> list[str]:
    if built is None:
        return [key for key, _ in Job.FIELDS if key not in IGNORED + ("name", "state_folder")]
    mine, theirs = job.to_dict(), built.to_dict()
    return [key for key in mine if key not in IGNORED and mine[key] != theirs.get(key)]


def _update(table: Any, job: Job, wanted: dict[str, Any], fields: list[str], environ: dict[str, str],
            defaults: dict[str, Any]) -> None:
    """Rewrite only the keys that decide `fields`, each to its wanted value or away."""
    keys: list[str] = []
    for field in fields:
        for key in FIELD_KEYS.get(field, (field,)):
            if key not in keys and key in config.KEYS:
                keys.append(key)
    for key in keys:
        if key == "env":
            _update_env(table, job, wanted.get("env", {}))
        elif key == "arguments":
            if "arguments" in table:
                del table["arguments"]
        elif key in wanted:
            value = wanted[key]
            if key == "command" and isinstance(table.get("command"), str):
                value = shlex.join(value)  # the user wrote a string: keep writing one
            _set(table, key, value)
        elif key in table:
            del table[key]


def _update_env(table: Any, job: Job, wanted: dict[str, str]) -> None:
    import tomlkit

    env = table.get("env")
    for key, value in wanted.items():
        if env is None:
            env = tomlkit.inline_table()
            _set(table, "env", env)
            env = table["env"]
        env[key] = value
    if env is not None:
        for key in list(env):
            if key not in job.env:
                del env[key]  # set in the file, gone from the job
            elif env[key] != job.env[key]:
                env[key] = job.env[key]


def _set(table: Any, key: str, value: Any) -> None:
    """Replace a key where it stands; a new key goes after the table's last key, before the blank
    lines and comments that lead to the next table."""
    if key in table:
        table[key] = value
        return
    body = getattr(getattr(table, "value", None), "body", None)
    if isinstance(body, list) and hasattr(table.value, "_insert_at"):
        last = max((i for i, (k, _) in enumerate(body) if k is not None), default=-1)
        if 0 <= last < len(body) - 1:
            table.value._insert_at(last + 1, key, value)
            return
    table[key] = value


def _table(values: dict[str, Any]) -> Any:
    """A new job's table, its env on one line as a hand-written file would have it."""
    import tomlkit

    table = tomlkit.table()
    for key, value in values.items():
        if isinstance(value, dict):
            inline = tomlkit.inline_table()
            inline.update(value)
            value = inline
        table[key] = value
    return table


def _without_tables(text: str, names: list[str]) -> str:
    """`text` without the [jobs.NAME] tables of `names`: from the comment lines right above the
    header to the last key before the next table's own leading comments."""
    lines = text.splitlines(keepends=True)
    where = config.scan_lines(text)
    headers = sorted(number for number, line in enumerate(lines, 1) if config._HEADER_RE.match(line))
    drop: set[int] = set()
    for name in names:
        start = where.get(("jobs", name), 0)
        if start not in headers:
            continue  # an inline table, removed through tomlkit
        following = [h for h in headers if h > start and not _within(where, h, name)]
        end = following[0] - 1 if following else len(lines)  # 1-based, inclusive
        while end > start and (lines[end - 1].lstrip().startswith("#") or not lines[end - 1].strip()):
            end -= 1  # the next table's comments and the blank lines stay with it
        first = start
        while first > 1 and lines[first - 2].lstrip().startswith("#"):
            first -= 1  # its own comments, right above its header
        drop.update(range(first, end + 1))
        after = end + 1
        while after <= len(lines) and not lines[after - 1].strip():
            drop.add(after)  # one run of blank lines goes with it
            after += 1
    kept = "".join(line for number, line in enumerate(lines, 1) if number not in drop)
    return kept.rstrip("\n") + "\n" if drop and kept.strip() else kept


def _within(where: dict[tuple[str, ...], int], header: int, name: str) -> bool:
    """Whether the table starting at line `header` is a sub-table of [jobs.NAME] ([jobs.NAME.env])."""
    return any(number == header and path[:2] == ("jobs", name) and len(path) > 2 for path, number in where.items())


def _check_round_trip(text: str, target: str, jobs: list[Job], ctx: Context, environ: dict[str, str],
                      warn: Echo) -> None:
    """Say which job the file still cannot give back as installed (an env key the shell adds
    that the job lacks, say): apply of it would change that job."""
    try:
        cfg = config.parse(text, target)
    except UserError as exc:
        raise UserError(f"{target}: the updated file would not parse ({exc}); nothing written", FAILED) from None
    specs = {spec.name: spec for spec in cfg.jobs}
    for job in jobs:
        spec = specs.get(job.name)
        if spec is None:
            continue
        fields = _differing(job, _built(cfg, spec, ctx, environ))
        if fields:
            warn(f"warning: apply of {target} would still change {job.name}: {', '.join(fields)}")


def _check_link(path: str) -> None:
    """A symlink is followed only when it is ours: one another user planted (in a folder the group
    shares) would have us write where they chose."""
    import stat

    try:
        st = os.lstat(path)
    except OSError:
        return
    if stat.S_ISLNK(st.st_mode) and st.st_uid != os.getuid():
        raise UserError(f"{path} is a symlink of uid {st.st_uid}, not yours: refusing to write where it points")


def _write(target: str, text: str, mode: int) -> None:
    try:
        # The mode is set on the new file before it takes the name: a chmod of the name after the
        # rename would follow whatever someone who may write the folder put there meanwhile.
        write_atomic(target, text.encode("utf-8"), mode=mode)
    except OSError as exc:
        raise UserError(f"cannot write {target}: {exc.strerror or exc}", FAILED) from None
