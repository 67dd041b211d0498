"""Reading old crontab lines: one line in, a proposed job (or the reason to leave it alone) out.

Pure: no crontab, no processes, no files. It reads a line the way cron and its /bin/sh would:
cron turns `\\%` into `%` (an unescaped `%` starts the command's stdin) and hands the rest to
`sh -c` in $HOME with HOME, LOGNAME, SHELL, PATH and the crontab's own assignments set; Debian's
cron does not set USER, so `$USER` is empty there. Only simple commands are taken over: one
program with its arguments and redirections, optionally behind `flock -n LOCK`, `run-one` or
`keep-one-running`. Anything sh would do more with (pipes, lists, substitutions, globs, a
variable we cannot know) is left alone, with the reason.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from typing import NoReturn, Optional, Union

from ..job.model import AT_WORDS, NAME_CHARS

TAG_RE = re.compile(r" #watchdog-singleton:[A-Za-z0-9_.@+-]+$")
ASSIGN_RE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*?)\s*$")
CRON_PATH = "/usr/bin:/bin"  # Debian cron's default PATH
# Crontab assignments that tell cron itself something; they are not the command's environment.
CRON_ONLY = {"MAILTO", "MAILFROM", "CRON_TZ", "CONTENT_TYPE", "CONTENT_TRANSFER_ENCODING", "RANDOM_DELAY"}
# Set by cron or by our own supervisor for every job: not stored as the job's --env.
BUILTIN = {"HOME", "LOGNAME", "SHELL", "PATH", "USER"}
MAIL = "mail"  # a stream nobody redirected: under cron it was mailed (or dropped without MAILTO)
INTERPRETERS = re.compile(r"^(python[0-9.]*|perl|ruby|node|bash|sh|dash|zsh|php|java|Rscript|nice|nohup|"
                          r"ionice|env|timeout|stdbuf|exec)$")
GENERIC_STEMS = {"", "lock", "lockfile", "flock", "pid", "run", "tmp", "daemon.lock"}


class Refused(Exception):
    """Why a line is left alone; the message is fit to print."""


@dataclass
class CronEnv:
    """What sh sees under cron for a line: the variables cron sets and the crontab's own."""

    home: str
    logname: str
    shell: str = "/bin/sh"
    path: str = CRON_PATH
    assigned: dict[str, str] = field(default_factory=dict)  # the crontab's assignments so far

    def lookup(self, name: str) -> Optional[str]:
        if name in self.assigned and name not in ("LOGNAME",):
            return self.assigned[name]
        return {"HOME": self.home, "LOGNAME": self.logname, "SHELL": self.shell, "PATH": self.path}.get(name)


@dataclass
class Proposal:
    """The job one old line becomes."""

    lineno: int
    line: bytes
    kind: str  # flock | run-one | keep-one-running | plain
    command: list[str]
    schedule: str
    keep_alive: bool  # True: kept alive (restart always); False: periodic, one run per due time
    workdir: str
    env: dict[str, str]  # the crontab's assignments the command saw (besides HOME, PATH, ...)
    path: str  # the PATH the command was looked up in
    stdout_log: Optional[str]  # a file the line appended to; None: our default log
    stderr_log: Optional[str]
    lock: Optional[str] = None  # the old lock file as cron's sh saw it
    lock_text: str = ""  # ... and as written
    name: str = ""
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    mail: str = ""  # the crontab's MAILTO above the line: kept as the job's failure mail (--mail)


@dataclass
class LeftAlone:
    lineno: int
    line: bytes
    reason: str


Result = Union[Proposal, LeftAlone]


# -- the shell subset ------------------------------------------------------------------------
@dataclass
class Redirect:
    fd: int
    op: str  # > >> >& <
    target: str


@dataclass
class Words:
    words: list[str]
    redirects: list[Redirect]
    unknown: list[str]  # variables we could not resolve (expanded to "", as sh would)
    raw: list[str] = field(default_factory=list)  # each word as written
    word_unknown: list[list[str]] = field(default_factory=list)  # each word's unresolved variables
    redirect_unknown: list[str] = field(default_factory=list)  # ... and the redirection targets'


SPECIAL = set("|&;()<>")
GLOB = set("*?[")


def _expand(text: str, j: int, quoted: bool, env: CronEnv, unknown: list[str]) -> tuple[str, int]:
    """Expand the $VAR or ${VAR} at text[j] == "$": its value and the index after it.

    A variable we cannot know expands to "" and is noted in `unknown`, as sh would leave it."""
    n = len(text)
    if j + 1 < n and text[j + 1] == "{":
        end = text.find("}", j)
        name = text[j + 2:end] if end > 0 else ""
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise Refused(f"the shell expansion {text[j:end + 1 if end > 0 else n]} is beyond a simple command")
        nxt = end + 1
    else:
        match = re.match(r"[A-Za-z_][A-Za-z0-9_]*", text[j + 1:])
        if not match:
            if j + 1 < n and text[j + 1] == "(":
                raise Refused("a command substitution $( ) cannot be split safely")
            if j + 1 >= n or text[j + 1] in " \t\"":
                return "$", j + 1  # a lone $ stays a $
            raise Refused(f"the shell parameter ${text[j + 1]} is beyond a simple command")
        name = match.group(0)
        nxt = j + 1 + len(name)
    value = env.lookup(name)
    if value is None:
        unknown.append(name)
        value = ""
    elif not quoted and (set(value) & (set(" \t\n") | GLOB)):
        raise Refused(f"${name} is unquoted and its value would be split or globbed by sh")
    return value, nxt


def _redirect_op(text: str, i: int) -> tuple[str, int]:
    """The redirection operator starting with the < or > at text[i], and the index after it."""
    op = text[i]
    if text.startswith(">>", i):
        return ">>", i + 2
    if text.startswith(">&", i):
        return ">&", i + 2
    if text.startswith(">|", i):
        return ">", i + 2
    if text.startswith("<<", i) or text.startswith("<&", i) or text.startswith("<>", i):
        raise Refused("a here-document or descriptor redirection cannot be split safely")
    return op, i + 1


def _fd_redirect_op(text: str, i: int) -> tuple[str, int]:
    """The operator after a descriptor number (2>..., 2>>..., 2>&...) at text[i], and the index after it."""
    if text.startswith(">>", i):
        return ">>", i + 2
    if text.startswith(">&", i):
        return ">&", i + 2
    if text[i] == ">":
        return ">", i + 1
    raise Refused("an input redirection of a descriptor cannot be split safely")


def _refuse_operator(text: str, i: int) -> NoReturn:
    """Refuse the control operator (| & ; ( )) at text[i], naming what sh would do with it."""
    what = {"|": "a pipeline (|)", "&": "a background or list operator (&, &&)",
            ";": "a command list (;)", "(": "a subshell ( )", ")": "a subshell ( )"}[text[i]]
    if text.startswith("||", i):
        what = "a list operator (||)"
    raise Refused(f"{what} cannot be split safely")


def _tilde(text: str, i: int, env: CronEnv) -> str:
    """The home a word-initial ~ at text[i] stands for; ~user is refused."""
    end = i + 1
    while end < len(text) and text[end] not in " \t/":
        end += 1
    if end > i + 1:
        raise Refused(f"{text[i:end]} names another user's home")
    return env.home


def _single_quoted(text: str, i: int) -> tuple[str, int]:
    """The literal text of the '...' opening at text[i], and the index after the closing quote."""
    end = text.find("'", i + 1)
    if end < 0:
        raise Refused("an unclosed ' quote")
    return text[i + 1:end], end + 1


def _double_quoted(text: str, i: int, env: CronEnv, unknown: list[str]) -> tuple[str, int]:
    """The text of the "..." opening at text[i], variables expanded, and the index after the closing quote."""
    n = len(text)
    part: list[str] = []
    i += 1
    while True:
        if i >= n:
            raise Refused('an unclosed " quote')
        c = text[i]
        if c == '"':
            return "".join(part), i + 1
        if c == "`":
            raise Refused("a command substitution with backticks cannot be split safely")
        if c == "\\" and i + 1 < n and text[i + 1] in '$`"\\':
            part.append(text[i + 1])
            i += 2
        elif c == "$":
            value, i = _expand(text, i, True, env, unknown)
            part.append(value)
        else:
            part.append(c)
            i += 1


def _word(text: str, i: int, env: CronEnv, unknown: list[str]) -> tuple[str, bool, int]:
    """Read the word starting at text[i]: its value, whether any of it was quoted, and the index after it."""
    n = len(text)
    word: list[str] = []
    quoted_any = False
    if text[i] == "~":
        word.append(_tilde(text, i, env))
        i += 1
    while i < n and text[i] not in " \t" and text[i] not in SPECIAL:
        c = text[i]
        if c == "\\":
            if i + 1 < n:
                word.append(text[i + 1])
            i += 2
        elif c == "'":
            part, i = _single_quoted(text, i)
            word.append(part)
            quoted_any = True
        elif c == '"':
            part, i = _double_quoted(text, i, env, unknown)
            word.append(part)
            quoted_any = True
        elif c == "`":
            raise Refused("a command substitution with backticks cannot be split safely")
        elif c == "$":
            value, i = _expand(text, i, False, env, unknown)
            word.append(value)
        elif c in GLOB or c in "{}":
            raise Refused(f"the unquoted {c} would be expanded by sh")
        else:
            word.append(c)
            i += 1
    return "".join(word), quoted_any, i


def split_shell(text: str, env: CronEnv) -> Words:
    """Split one simple sh command into words and redirections, expanding $VAR, ${VAR} and ~.

    Raises Refused for anything beyond a simple command."""
    words: list[str] = []
    raw_words: list[str] = []
    word_unknown: list[list[str]] = []
    redirect_unknown: list[str] = []
    redirects: list[Redirect] = []
    unknown: list[str] = []
    i, n = 0, len(text)
    pending: Optional[tuple[int, str]] = None  # a redirection waiting for its target word
    while i < n:
        c = text[i]
        if c in " \t":
            i += 1
            continue
        if c == "#":
            break  # a comment to the end of the line
        if c in "<>":
            op, i = _redirect_op(text, i)
            if pending:
                raise Refused("a redirection without a target")
            pending = (1 if op != "<" else 0, op)
            continue
        if c in SPECIAL:
            _refuse_operator(text, i)
        start, unknown_before = i, len(unknown)
        value, quoted_any, i = _word(text, i, env, unknown)
        raw = text[start:i]
        if i < n and text[i] in "<>" and not quoted_any and raw.isdigit() and not pending:
            fd = int(raw)  # 2>... : the digits name the descriptor
            op, i = _fd_redirect_op(text, i)
            pending = (fd, op)
            continue
        if pending:
            redirects.append(Redirect(pending[0], pending[1], value))
            redirect_unknown.extend(unknown[unknown_before:])
            pending = None
            continue
        if not value and not quoted_any:
            continue  # an unquoted expansion to nothing is no word at all, to sh
        words.append(value)
        raw_words.append(raw)
        word_unknown.append(unknown[unknown_before:])
    if pending:
        raise Refused("a redirection without a target")
    return Words(words, redirects, unknown, raw_words, word_unknown, redirect_unknown)


def streams(redirects: list[Redirect], start: tuple[str, str], workdir: str,
            notes: list[str]) -> tuple[str, str]:
    """Where stdout and stderr end up after `redirects`, applied in order as sh does, starting
    from `start`. A file is an absolute path; MAIL is cron's own capture."""
    fds = {1: start[0], 2: start[1]}
    for r in redirects:
        if r.op == "<":
            if r.target != "/dev/null":
                raise Refused(f"input from {r.target} cannot be taken over")
            continue
        if r.fd not in (1, 2):
            raise Refused(f"a redirection of descriptor {r.fd} cannot be taken over")
        if r.op == ">&":
            if r.target not in ("1", "2"):
                raise Refused(f"the redirection {r.fd}>&{r.target} cannot be taken over")
            fds[r.fd] = fds[int(r.target)]
            continue
        if not r.target:
            raise Refused("a redirection to an empty file name")
        path = os.path.normpath(os.path.join(workdir, r.target))
        if r.op == ">" and path != "/dev/null":
            notes.append(f"{r.target} was truncated at each start; the job appends to it")
        fds[r.fd] = path
    return fds[1], fds[2]


# -- one crontab line ------------------------------------------------------------------------
def split_schedule(line: str) -> tuple[str, str]:
    """(schedule, command) of a job line."""
    stripped = line.lstrip(" \t")
    if stripped.startswith("@"):
        word, _, rest = stripped.partition(" ") if " " in stripped.split("\t")[0] else stripped.partition("\t")
        if word not in AT_WORDS:
            raise Refused(f"{word} is not a schedule cron knows")
        return word, rest.lstrip(" \t")
    parts = re.split(r"[ \t]+", stripped, maxsplit=5)
    if len(parts) < 6:
        raise Refused("not a crontab job line (five time fields and a command)")
    if not all(re.fullmatch(r"[A-Za-z0-9*/,-]+", p) for p in parts[:5]):
        raise Refused("its time fields are not cron's")
    return " ".join(parts[:5]), parts[5]


def cron_percent(command: str) -> str:
    """The command as cron hands it to sh: `\\%` becomes `%`; an unescaped `%` is refused."""
    out = []
    i = 0
    while i < len(command):
        if command[i] == "\\" and command.startswith("\\%", i):
            out.append("%")
            i += 2
            continue
        if command[i] == "%":
            raise Refused("an unescaped % in the command (cron feeds what follows it to the command's stdin)")
        out.append(command[i])
        i += 1
    return "".join(out)


def parse_flock(words: list[str]) -> tuple[int, Optional[str], list[str]]:
    """(index of the lock word, shell string or None, argv) from the words after `flock`."""
    nonblock = False
    i = 0
    while i < len(words) and words[i].startswith("-") and words[i] != "-":
        opt = words[i]
        if opt in ("--nonblock", "--nb", "--no-block"):
            nonblock = True
        elif opt in ("--exclusive", "--close", "--no-fork", "--verbose"):
            pass
        elif opt in ("-E", "--conflict-exit-code"):
            i += 1
        elif opt.startswith("--"):
            raise Refused(f"flock {opt} is not the classic non-blocking lock")
        else:
            for letter in opt[1:]:
                if letter == "n":
                    nonblock = True
                elif letter in "xeoF":
                    pass
                elif letter == "E":
                    i += 1  # -E N: its value is the next word
                    break
                else:
                    raise Refused(f"flock -{letter} is not the classic non-blocking lock")
        i += 1
    if not nonblock:
        raise Refused("flock without -n waits for the lock and queues a second copy; only flock -n lines are "
                      "taken over")
    if i >= len(words):
        raise Refused("flock without a lock file")
    lock = words[i]
    if lock.isdigit():
        raise Refused("flock on a descriptor number needs a shell around it")
    rest = words[i + 1:]
    if rest and rest[0] in ("-c", "--command"):
        if len(rest) != 2:
            raise Refused("flock -c takes exactly one command string")
        return i, rest[1], []
    if not rest:
        raise Refused("flock without a command")
    return i, None, rest


def run_one_lock(home: str, argv: list[str]) -> str:
    """The lock file run-one takes for `argv` (run-one: $HOME/.cache/run-one/<md5 of "$@">)."""
    digest = hashlib.md5((" ".join(argv) + "\n").encode(), usedforsecurity=False).hexdigest()
    return os.path.join(home, ".cache", "run-one", digest)


def parse_line(lineno: int, raw: bytes, env: CronEnv) -> Optional[Result]:
    """The job `raw` would become, why it is left alone, or None for a blank or comment line."""
    try:
        line = raw.decode()
    except UnicodeDecodeError:
        return LeftAlone(lineno, raw, "not valid UTF-8")
    if TAG_RE.search(line):
        return LeftAlone(lineno, raw, "our own line")
    stripped = line.strip(" \t\r")
    if not stripped or stripped.startswith("#"):
        return None
    assignment = ASSIGN_RE.match(line)
    if assignment and not re.match(r"^\s*[0-9*@]", line):
        return LeftAlone(lineno, raw, "an environment setting, not a job")
    try:
        return _proposal(lineno, raw, line.rstrip("\r"), env)
    except Refused as exc:
        return LeftAlone(lineno, raw, str(exc))


def _proposal(lineno: int, raw: bytes, line: str, env: CronEnv) -> Proposal:
    schedule, command_text = split_schedule(line)
    if schedule == "@reboot":
        raise Refused("an @reboot line: it runs once at boot, which a cron-driven job cannot say")
    text = cron_percent(command_text)
    parsed = split_shell(text, env)
    words = list(parsed.words)
    prefix_env: dict[str, str] = {}
    while words and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", words[0]):
        key, _, value = words.pop(0).partition("=")
        prefix_env[key] = value
    if not words:
        raise Refused("no command")
    workdir = env.home
    notes: list[str] = []
    warnings: list[str] = []
    mail = (MAIL, MAIL)
    outer = streams(parsed.redirects, mail, workdir, notes)
    program = os.path.basename(words[0])
    lock: Optional[str] = None
    lock_text = ""
    if program == "flock":
        kind = "flock"
        at, shell_text, argv = parse_flock(words[1:])
        at += 1 + len(parsed.words) - len(words)  # in parsed.words, before the assignments were taken off
        lock_text = parsed.raw[at]
        lock = _lock_path(parsed.words[at], lock_text, parsed.word_unknown[at], workdir, warnings)
        if shell_text is None and len(argv) >= 3 and os.path.basename(argv[0]) in ("sh", "bash", "dash") \
                and argv[1] == "-c":
            if len(argv) != 3:
                raise Refused(f"{argv[0]} -c with extra arguments cannot be taken over")
            shell_text = argv[2]
        if shell_text is not None:
            inner = split_shell(shell_text, env)
            argv = inner.words
            while argv and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", argv[0]):
                key, _, value = argv.pop(0).partition("=")
                prefix_env[key] = value
            if inner.unknown:
                raise Refused(_unknown(inner.unknown))
            out, err = streams(inner.redirects, outer, workdir, notes)
        else:
            out, err = outer
        unknown = [v for k, vs in enumerate(parsed.word_unknown) if k != at for v in vs]
        unknown += parsed.redirect_unknown
        if unknown:
            raise Refused(_unknown(unknown))
    elif program in ("run-one", "keep-one-running"):
        kind = program
        argv = words[1:]
        if parsed.unknown:
            raise Refused(_unknown(parsed.unknown))
        lock = run_one_lock(env.lookup("HOME") or env.home, argv)
        out, err = outer
    else:
        kind = "plain"
        argv = words
        if parsed.unknown:
            raise Refused(_unknown(parsed.unknown))
        out, err = outer
    if not argv:
        raise Refused(f"{program} without a command")
    if os.path.basename(argv[0]) in ("flock", "run-one", "keep-one-running"):
        raise Refused(f"{os.path.basename(argv[0])} inside another wrapper cannot be taken over")
    stdout_log, stderr_log = _log(out, "stdout", notes), _log(err, "stderr", notes)
    every_minute = schedule == "* * * * *"
    keep_alive = kind == "keep-one-running" or (kind != "plain" and every_minute)
    job_env = {k: v for k, v in env.assigned.items() if k not in CRON_ONLY and k not in BUILTIN}
    job_env.update(prefix_env)
    return Proposal(lineno=lineno, line=raw, kind=kind, command=argv, schedule=schedule, keep_alive=keep_alive,
                    workdir=workdir, env=job_env, path=env.lookup("PATH") or CRON_PATH, stdout_log=stdout_log,
                    stderr_log=stderr_log, lock=lock, lock_text=lock_text, notes=notes, warnings=warnings,
                    mail=env.assigned.get("MAILTO", "").strip())


def _unknown(names: list[str]) -> str:
    listed = ", ".join(f"${n}" for n in dict.fromkeys(names))
    if "USER" in names:
        return f"it uses {listed}, which Debian's cron does not set (sh sees it empty)"
    return f"it uses {listed}, which cron does not set for it"


def _lock_path(word: str, text: str, unknown: list[str], workdir: str, warnings: list[str]) -> str:
    """The lock path as cron's sh expanded it; an unset variable is empty there, as in sh."""
    path = os.path.normpath(os.path.join(workdir, word))
    if "USER" in unknown:
        warnings.append(f"the old lock {text} depends on $USER, which Debian's cron does not set: under cron "
                        f"it was {path}, shared by every user whose line says the same")
    elif unknown:
        warnings.append(f"the old lock {text} uses {', '.join('$' + v for v in unknown)}, which cron "
                        f"does not set: under cron it was {path}")
    return path


def _log(target: str, stream: str, notes: list[str]) -> Optional[str]:
    if target == MAIL:
        return None
    if target == "/dev/null":
        notes.append(f"its {stream} was thrown away; now it goes to the job's {stream} log")
        return None
    return target


# -- names -----------------------------------------------------------------------------------
def derive_name(proposal: Proposal, taken: set[str], user: str = "") -> str:
    """A valid job name, not in `taken`: from the lock file's name, else from the command."""
    candidates = []
    if proposal.lock_text and proposal.kind == "flock":
        stem = os.path.basename(proposal.lock_text)
        stem = re.sub(r"\$\{?[A-Za-z_][A-Za-z0-9_]*\}?", "", stem)
        if user:
            stem = stem.replace(user, "")
        stem = re.sub(r"(\.(lock|lockfile|lck|pid|flock))+$", "", stem, flags=re.IGNORECASE)
        stem = stem.strip(".-_")
        if stem.lower() not in GENERIC_STEMS:
            candidates.append(stem)
    argv = proposal.command
    script = next((a for a in argv[1:] if not a.startswith("-")), "") if INTERPRETERS.match(
        os.path.basename(argv[0])) else ""
    base = os.path.basename(script or argv[0])
    candidates.append(re.sub(r"\.(py|sh|pl|rb|js|bash)$", "", base))
    candidates.append("job")
    for candidate in candidates:
        clean = "".join(c if c in NAME_CHARS else "-" for c in candidate).lstrip(".@+-")[:60].rstrip("-")
        if clean:
            break
    name, k = clean, 2
    while name in taken:
        name = f"{clean}-{k}"
        k += 1
    return name


def scan(text: bytes, home: str, logname: str, taken: set[str]) -> list[Result]:
    """Every job line of a crontab, in order: its proposal or why it is left alone. Names are
    unique among themselves and against `taken` (this host's jobs and our lines)."""
    env = CronEnv(home=home, logname=logname)
    results: list[Result] = []
    taken = set(taken)
    for lineno, raw in enumerate(text.split(b"\n"), 1):
        try:
            assignment = ASSIGN_RE.match(raw.decode())
        except UnicodeDecodeError:
            assignment = None
        result = parse_line(lineno, raw, env)
        if result is None:
            continue
        if isinstance(result, LeftAlone) and assignment and result.reason.startswith("an environment"):
            key, value = assignment.group(1), assignment.group(2)
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
                value = value[1:-1]
            env.assigned[key] = value
            if key == "SHELL":
                env.shell = value
        if isinstance(result, Proposal):
            result.name = derive_name(result, taken, logname)
            taken.add(result.name)
        results.append(result)
    return results


# -- CRON_TZ ---------------------------------------------------------------------------------
def cron_zones(text: bytes) -> dict[str, str]:
    """Our lines' names -> the CRON_TZ set above them (cronie and others fire the lines after a
    CRON_TZ=ZONE setting in that zone's time); lines with none are left out."""
    zones: dict[str, str] = {}
    zone = ""
    for raw in text.split(b"\n"):
        line = raw.decode(errors="replace")
        assignment = ASSIGN_RE.match(line)
        if assignment and assignment.group(1) == "CRON_TZ" and not re.match(r"^\s*[0-9*@]", line):
            value = assignment.group(2)
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
                value = value[1:-1]
            zone = value
            continue
        tag = TAG_RE.search(line)
        if tag and zone:
            zones[tag.group(0).split(":", 1)[1]] = zone
    return zones


def next_due(schedule: str, t: float, zone: Optional[str] = None) -> Optional[str]:
    """The first due time of `schedule` after `t` as ISO 8601, in `zone` (a CRON_TZ) if given and
    known, else in local time; None for a schedule that never fires."""
    from ..job.schedule import CronSchedule
    from ..timefmt import iso

    try:
        cron = CronSchedule(schedule)
    except ValueError:
        return None
    tz = None
    if zone:
        try:
            from zoneinfo import ZoneInfo

            tz = ZoneInfo(zone)
        except (ImportError, ValueError, OSError, KeyError):
            tz = None  # an unknown zone: cron falls back to local time too
    if tz is None:
        try:
            return iso(cron.next_after(t))
        except ValueError:
            return None
    import datetime

    start = datetime.datetime.fromtimestamp(t, tz)
    day = start.date()
    for i in range(5 * 366):
        date = day + datetime.timedelta(days=i)
        if not cron.fires_on(date.month, date.day, date.isoweekday() % 7):
            continue
        for hour in cron.hours:
            for minute in cron.minutes:
                when = datetime.datetime(date.year, date.month, date.day, hour, minute, tzinfo=tz)
                if when.timestamp() > t:
                    return iso(when.timestamp())  # shown in local time, as every time of ours
    return None
