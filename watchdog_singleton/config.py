"""The TOML file of many jobs that `apply` reads and `export` writes, with line numbers for errors.

    [defaults]                # every job inherits these keys; its own keys win (env tables merge)
    workdir = "/srv/panda"

    [jobs.add]                # one table per job, named as `install NAME` would be
    command = "python3 -u add.py"
    period = 240              # seconds, start to start: a job with a period is periodic

Key names follow PanDA's daemon config where they mean the same (enable, period, timeout, loop,
arguments, sync); the others are the install options with `_` for `-`. Parsing stops at the
first error, which names the file, the line, the job and the key (ConfigError, exit 2).
"""

from __future__ import annotations

import difflib
import os
import re
import shlex
import sys
from dataclasses import dataclass, field
from typing import Any, Optional

from . import paths
from .envvars import CLUSTER_ENV
from .errors import UserError
from .farm import place
from .job import options
from .job.model import ENV_KEY_CHARS, Job
from .job.request import InstallRequest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - 3.9 and 3.10
    import tomli as tomllib

# key: (the InstallRequest field it sets, or "" when apply itself handles it; its kind): options.py's
# TOML keys, plus command, arguments (PanDA's: appended to command) and enable (PanDA's: false keeps
# the job installed but stopped and its line off).
KEYS: dict[str, tuple[str, str]] = options.file_keys()
KIND_TEXT = options.KIND_TEXT


def _file_words() -> list[tuple[str, str]]:
    """install's option names as this file spells them, longest first ("--every SECONDS" before
    "--every"): a message of build_job's is told in the file's words."""
    words = [("--periodic (or --every SECONDS)", "periodic = true (or period = SECONDS)"),
             ("--catch-up once", 'catch_up = "once"'),
             ("--cluster postgresql://USER@HOST/DB", 'cluster = "postgresql://USER@HOST/DB"')]
    for opt in options.OPTIONS.values():
        if not opt.key:
            continue
        if opt.kind == "bool":
            words.append((opt.flag, f"{opt.key} = true"))
            continue
        if opt.metavar:
            words.append((f"{opt.flag} {opt.metavar}", opt.key))
        words.append((opt.flag, opt.key))
    return sorted(words, key=lambda pair: -len(pair[0]))


OPTION_KEYS = _file_words()


class ConfigError(UserError):
    """A bad file: the message names the file, the line, and the job and key when there is one."""


@dataclass
class JobSpec:
    """One [jobs.NAME] table, defaults applied: what `install` would be given, and where it stands."""

    name: str
    values: dict[str, Any]  # the job's keys over [defaults]
    line: int  # of the [jobs.NAME] header (or its inline table)
    key_lines: dict[str, int] = field(default_factory=dict)  # key -> line, in the job or in [defaults]
    from_defaults: set[str] = field(default_factory=set)

    @property
    def enable(self) -> bool:
        return bool(self.values.get("enable", True))


@dataclass
class ConfigFile:
    path: str  # absolute: jobs that apply creates remember it (Job.applied_from)
    jobs: list[JobSpec]

    def error(self, spec: Optional[JobSpec], key: str, message: str) -> ConfigError:
        return config_error(self.path, spec, key, message)

    def request(self, spec: JobSpec) -> InstallRequest:
        """The InstallRequest for `spec`: relative paths are taken from the file's folder."""
        values = spec.values
        kwargs: dict[str, Any] = {"name": spec.name, "start": spec.enable}
        folder = os.path.dirname(self.path)
        for key, value in values.items():
            target, kind = KEYS[key]
            if not target:
                continue
            if kind == "argv":
                value = split_command(self.path, spec, key, value) if isinstance(value, str) else list(value)
            elif kind == "env":
                value = [f"{k}={v}" for k, v in value.items()]
            elif kind == "path":
                value = os.path.join(folder, os.path.expanduser(value))
            kwargs[target] = value
        kwargs["command"] = list(kwargs.get("command", [])) + list(values.get("arguments", []))
        kwargs.setdefault("workdir", folder)  # the file's folder, not wherever apply was typed
        return InstallRequest(**kwargs)


def split_command(path: str, spec: JobSpec, key: str, text: str) -> list[str]:
    """A `command` string split as a shell would; an unclosed quote is the file's error."""
    try:
        return shlex.split(text)
    except ValueError as exc:  # "No closing quotation", "No escaped character"
        raise config_error(path, spec, key, f"{text!r} cannot be split as a shell would: "
                           f"{str(exc)[0].lower()}{str(exc)[1:]}") from None


def config_error(path: str, spec: Optional[JobSpec], key: str, message: str) -> ConfigError:
    line = (spec.key_lines.get(key) or spec.line) if spec is not None else 0
    where = f"{path}:{line}" if line else path
    if spec is None:
        return ConfigError(f"{where}: {message}")
    origin = " (from [defaults])" if key in spec.from_defaults else ""
    about = f"job {spec.name}, key {key}{origin}" if key else f"job {spec.name}"
    return ConfigError(f"{where}: {about}: {message}")


def in_file_words(message: str) -> str:
    """A message of build_job's with install's option names told as this file spells them."""
    for option, name in OPTION_KEYS:
        message = message.replace(option, name)
    return message


def error_of(path: str, spec: JobSpec, exc: UserError) -> ConfigError:
    """A build_job error as the file's: at the line of the key it is about (exc.field)."""
    return config_error(path, spec, options.key_of(exc.field), in_file_words(str(exc)))


def option_to_key(message: str) -> tuple[str, str]:
    """(the key a message is about, found in its text; the message in this file's words). For a
    message without a field only: apply goes by UserError.field (error_of)."""
    found = [(message.find(option), name.split(" ")[0]) for option, name in OPTION_KEYS if option in message]
    if found:
        return min(found, key=lambda pos_name: pos_name[0])[1], in_file_words(message)
    for start, name in (("program", "command"), ("no command", "command"), ("command argument", "command"),
                        ("schedule", "schedule"), ("a periodic job cannot run", "schedule"),
                        ("working directory", "workdir"), ("lock folder", "lock_dir"), ("log folder", "log_dir"),
                        ("log file", "log_dir"), ("sync", "sync"), ("cluster", "cluster"), ("job name", "")):
        if message.startswith(start) or start in message.split(":")[0]:
            return name, message
    return "", message


# --- reading ---------------------------------------------------------------------------------

_KEY = r'(?:[A-Za-z0-9_-]+|"(?:[^"\\]|\\.)*"|\'[^\']*\')'
_DOTTED = rf"{_KEY}(?:\s*\.\s*{_KEY})*"
_HEADER_RE = re.compile(rf"^\s*\[\s*({_DOTTED})\s*\]")
_ASSIGN_RE = re.compile(rf"^\s*({_DOTTED})\s*=")
_PIECE_RE = re.compile(_KEY)


def _dotted(text: str) -> tuple[str, ...]:
    pieces = []
    for piece in _PIECE_RE.findall(text):
        if piece[0] == '"':
            piece = piece[1:-1].encode().decode("unicode_escape") if "\\" in piece else piece[1:-1]
        elif piece[0] == "'":
            piece = piece[1:-1]
        pieces.append(piece)
    return tuple(pieces)


def scan_lines(text: str) -> dict[tuple[str, ...], int]:
    """Where each table and key starts: ("jobs", "web") -> line of [jobs.web], ("jobs", "web",
    "grace") -> line of its grace key. Found by scanning the text, as tomllib gives no positions;
    the first occurrence wins."""
    where: dict[tuple[str, ...], int] = {}
    table: tuple[str, ...] = ()
    for number, line in enumerate(text.splitlines(), 1):
        header = _HEADER_RE.match(line)
        if header:
            table = _dotted(header.group(1))
            for i in range(1, len(table) + 1):
                where.setdefault(table[:i], number)
            continue
        assign = _ASSIGN_RE.match(line)
        if assign:
            path = table + _dotted(assign.group(1))
            for i in range(len(table) + 1, len(path) + 1):
                where.setdefault(path[:i], number)
    return where


def load(path: str) -> ConfigFile:
    import stat

    path = os.path.abspath(path)
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer; it is refused below.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        mode = st.st_mode
        if not stat.S_ISREG(mode):
            kind = "a FIFO" if stat.S_ISFIFO(mode) else "a folder" if stat.S_ISDIR(mode) else \
                "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a regular file"
            raise ConfigError(f"{path} is {kind}: apply reads a regular file")
        # Its commands go into our crontab: a file another user wrote, or may rewrite, would run
        # their code as us from then on. What counts is the file read (a symlink is followed).
        why = place.problem(path, st, "job file", folder=False, owners=(0,))
        if why:
            raise ConfigError(why.replace("refusing to use it", "refusing to apply it (copy it to a file of yours)"))
        os.set_blocking(fd, True)
        with os.fdopen(fd, "rb", closefd=False) as fh:
            raw = fh.read()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise ConfigError(f"{path}:{line}: not UTF-8 text") from None
    return parse(text, path)


def parse(text: str, path: str) -> ConfigFile:
    """The jobs of `text` (the file at `path`), every key checked for name and type."""
    try:
        data = tomllib.loads(text)
    except RecursionError:  # arrays or tables nested thousands deep
        raise ConfigError(f"{path}: TOML nested too deeply to read") from None
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        at = re.search(r"\s*\(at line (\d+), column \d+\)$", message)
        line = int(at.group(1)) if at else 0
        core = message[:at.start()] if at else message
        twice = re.fullmatch(r"Cannot declare \('jobs', '([^']*)'\) twice", core)
        if twice:
            core = f"job {twice.group(1)} is defined twice (TOML: {core})"
        else:
            core = f"TOML syntax error: {core}"
        raise ConfigError(f"{path}:{line}: {core}" if line else f"{path}: {core}") from None
    lines = scan_lines(text)
    for key in data:
        if key not in ("jobs", "defaults"):
            raise ConfigError(f"{path}:{lines.get((key,), 0)}: unknown top-level key {key!r}: "
                              "the file holds [defaults] and [jobs.NAME] tables")
    defaults = data.get("defaults", {})
    if not isinstance(defaults, dict):
        raise ConfigError(f"{path}:{lines.get(('defaults',), 0)}: defaults must be a table: [defaults]")
    jobs = data.get("jobs", {})
    if not isinstance(jobs, dict):
        raise ConfigError(f"{path}:{lines.get(('jobs',), 0)}: jobs must hold tables: [jobs.NAME]")
    default_spec = JobSpec("[defaults]", defaults, lines.get(("defaults",), 0),
                           {k: lines.get(("defaults", k), 0) for k in defaults})
    for key, value in defaults.items():
        _check_key(path, default_spec, key, value, in_defaults=True)
    specs = []
    for name, table in jobs.items():
        line = lines.get(("jobs", name), 0)
        if not isinstance(table, dict):
            raise ConfigError(f"{path}:{line}: job {name} must be a table: [jobs.{name}]")
        key_lines = {k: lines.get(("jobs", name, k), 0) or line for k in table}
        values = dict(defaults)
        values.update(table)
        if isinstance(defaults.get("env"), dict) and isinstance(table.get("env"), dict):
            values["env"] = {**defaults["env"], **table["env"]}
        inherited = set(defaults) - set(table)
        key_lines.update({k: default_spec.key_lines[k] for k in inherited})
        spec = JobSpec(name, values, line, key_lines, inherited)
        for key, value in table.items():
            _check_key(path, spec, key, value)
        if "command" not in values:
            raise config_error(path, spec, "", "no command: add command = [\"program\", \"arg\", ...]")
        if values.get("period") and values.get("periodic") is False:
            raise config_error(path, spec, "periodic", "a job with a period is periodic: remove periodic = false")
        specs.append(spec)
    return ConfigFile(path, specs)


def _check_key(path: str, spec: JobSpec, key: str, value: Any, in_defaults: bool = False) -> None:
    if key not in KEYS:
        close = difflib.get_close_matches(key, KEYS, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        where = f"{path}:{spec.key_lines.get(key) or spec.line}"
        about = "[defaults]" if in_defaults else f"job {spec.name}"
        raise ConfigError(f"{where}: {about}, key {key}: unknown key{hint}")
    kind = KEYS[key][1]
    where = f"{path}:{spec.key_lines.get(key) or spec.line}"
    about = "[defaults]" if in_defaults else f"job {spec.name}"
    if not _has_kind(value, kind):
        got = "a table" if isinstance(value, dict) else type(value).__name__
        raise ConfigError(f"{where}: {about}, key {key}: must be {KIND_TEXT[kind]}, not {got} {value!r}"[:500])
    if kind == "env":
        for name in value:
            if not name or name[0].isdigit() or not set(name) <= ENV_KEY_CHARS:
                raise ConfigError(f"{where}: {about}, key env: {name!r} is not a valid variable name "
                                  "(letters, digits and _, not starting with a digit)")


def _has_kind(value: Any, kind: str) -> bool:
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind in ("str", "path"):
        return isinstance(value, str)
    if kind == "list":
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    if kind in ("argv", "hook"):
        return isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value))
    return isinstance(value, dict) and all(isinstance(v, str) for v in value.values())


# --- writing ---------------------------------------------------------------------------------

def job_table(job: Job, default_log_dir: str, default_lock_dir: str, environ: Optional[dict[str, str]] = None,
              defaults: Optional[dict[str, Any]] = None, folder: Optional[str] = None) -> dict[str, Any]:
    """The keys that give `job` back when applied: only those that differ from the defaults in
    effect (`defaults`, a file's [defaults] table, over the built-in ones).

    With `folder` (the file's own), paths are taken relative to it and workdir defaults to it, as
    apply does; without, workdir is always written. With `environ` (the shell apply will run
    from), an environment key install captured from the shell (PATH, LANG, ...) is written only
    when the job's value is not the one that shell gives it anyway.
    """
    from .cluster import NO_CLUSTER
    from .job.model import snapshot_env

    given = dict(defaults or {})

    def default_path(key: str, builtin: Optional[str]) -> Optional[str]:
        if key not in given or not isinstance(given[key], str):
            return builtin
        return os.path.normpath(os.path.join(folder or "", os.path.expanduser(given[key])))

    default = {name: opt.default for name, opt in options.OPTIONS.items()}
    table: dict[str, Any] = {"command": list(job.command)}
    if job.workdir != default_path("workdir", folder):
        table["workdir"] = job.workdir
    if job.enabled != given.get("enable", True):
        table["enable"] = job.enabled
    if job.periodic and job.every > 0:
        if job.every != given.get("period", 0):
            table["period"] = _number(job.every)
        if given.get("periodic") is False:
            table["periodic"] = True
    else:
        if given.get("period", 0):
            table["period"] = 0
        if job.periodic != given.get("periodic", False):
            table["periodic"] = job.periodic
    if job.schedule != given.get("schedule", default["schedule"]):
        table["schedule"] = job.schedule
    for key in ("timeout", "jitter", "max_lifetime", "grace", "backoff_initial", "backoff_max", "min_uptime",
                "settle"):
        if getattr(job, key) != given.get(key, default[key]):
            table[key] = _number(getattr(job, key))
    for key in ("catch_up", "restart", "log_max_bytes", "log_backups", "loop", "sync", "allow_network_fs", "lean",
                "shared", "forking", "standby", "rotate", "mail"):
        if getattr(job, key) != given.get(key, default[key]):
            table[key] = getattr(job, key)
    default_hook = given.get("on_failure", [])
    if list(job.on_failure) != (list(default_hook) if isinstance(default_hook, list) else shlex.split(default_hook)):
        table["on_failure"] = list(job.on_failure)
    if job.notify_every != given.get("notify_every", default["notify_every"]):
        table["notify_every"] = _number(job.notify_every)
    if job.cluster and job.cluster != given.get("cluster"):
        table["cluster"] = job.cluster
    elif not job.cluster and str(given.get("cluster", os.environ.get(CLUSTER_ENV, ""))).strip() not in (
            "", NO_CLUSTER):
        table["cluster"] = NO_CLUSTER  # or apply from this shell would make it a cluster job
    if job.cluster and job.lease != given.get("lease", default["lease"]):
        table["lease"] = _number(job.lease)
    log_dir = os.path.dirname(job.stdout_log)
    if (job.stdout_log, job.stderr_log) != paths.log_files(log_dir, job.name):
        table["stdout_log"], table["stderr_log"] = job.stdout_log, job.stderr_log  # taken over from `>> FILE`
    elif log_dir != default_path("log_dir", default_log_dir):
        table["log_dir"] = log_dir
    from .lock.flock import is_own_default

    if job.lock_dir != default_path("lock_dir", default_lock_dir) and not (
            is_own_default(job.lock_dir) and "lock_dir" not in given):
        table["lock_dir"] = job.lock_dir
    inherited_env = snapshot_env(environ) if environ is not None else {}
    if isinstance(given.get("env"), dict):
        inherited_env.update(given["env"])
    env = {key: value for key, value in job.env.items() if inherited_env.get(key) != value}
    if env:
        table["env"] = env
    if folder is not None:
        for key in ("workdir", "log_dir", "stdout_log", "stderr_log", "lock_dir"):
            if key in table:
                table[key] = relative_path(table[key], folder)
    return table


def relative_path(path: str, folder: str) -> str:
    """`path` as a file in `folder` would write it: relative when inside the folder."""
    if path == folder:
        return "."
    return os.path.relpath(path, folder) if path.startswith(folder.rstrip("/") + "/") else path


def dump(jobs: list[Job], default_log_dir: str, default_lock_dir: str,
         environ: Optional[dict[str, str]] = None) -> str:
    import tomli_w

    tables = {job.name: job_table(job, default_log_dir, default_lock_dir, environ) for job in jobs}
    head = ("# watchdog-singleton jobs: 'watchdog-singleton apply FILE' makes a host's jobs match this file.\n"
            "# Keys: see 'watchdog-singleton apply --help' and docs/periodic-and-config.md.\n\n")
    return head + tomli_w.dumps({"jobs": tables}) if tables else head


def _number(value: float) -> float | int:
    return int(value) if value == int(value) else value
