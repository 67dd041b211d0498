"""The lines of the user's crontab that we own, and nothing else.

Each of our lines ends with the tag ` #watchdog-singleton:NAME` (to sh, a comment). Every
other line is kept as bytes and written back exactly as read: python-crontab is used only to
validate schedules, because on a read-then-write it rewrites lines it did not create.
Edits are serialised by a lock (fasteners) in the per-host state folder and re-read just before
writing, so that a foreign write between our read and our write is seen and the edit is redone on
top of it. crontab(1) has no compare-and-swap: a foreign write that lands between that re-read
and our write is still lost, so the two run back to back (see CrontabEditor.edit).
"""

from __future__ import annotations

import errno
import os
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from typing import Callable, Optional

from .. import files
from ..errors import FAILED, LOCK_HELD, UserError
from ..job.model import Job
from ..job.schedule import FIELDS, expand

TAG = "#watchdog-singleton:"
# cron reads at most this much of a line's command (Vixie cron's MAX_COMMAND, 1000 with its NUL) and
# drops the rest unseen: our tag comes after the command, so only the command must fit.
MAX_COMMAND = 999
DISABLED = "#disabled "
LINE_RE = re.compile(rb"^(?P<off>#disabled )?(?P<body>.*) #watchdog-singleton:(?P<name>[A-Za-z0-9_.@+-]+)$")


@dataclass
class Entry:
    name: str
    enabled: bool  # False for our `#disabled ` prefix and for a line commented out by hand
    line: bytes


def is_commented(line: bytes) -> bool:
    return line.lstrip(b" \t").startswith(b"#")


def find_crontab_binary() -> str:
    found = shutil.which("crontab") or next(
        (p for p in ("/usr/bin/crontab", "/bin/crontab") if os.path.isfile(p) and os.access(p, os.X_OK)), None)
    if not found:
        raise UserError("no crontab command on this host (install cron, e.g. the Debian package 'cron')")
    return found


class CrontabIO:
    """Reads and writes the invoking user's crontab through the real crontab(1)."""

    def __init__(self, binary: Optional[str] = None,
                 run: Callable[..., "subprocess.CompletedProcess[bytes]"] = subprocess.run) -> None:
        self.binary = binary or find_crontab_binary()
        self.run = run  # a seam: tests run the real crontab(1) as their unprivileged user

    def read(self) -> bytes:
        proc = self.run([self.binary, "-l"], capture_output=True)
        if proc.returncode == 0:
            return proc.stdout
        err = proc.stderr.decode(errors="replace").strip()
        if "no crontab for" in err:
            return b""
        raise UserError(_crontab_problem(err), FAILED if "not allowed" not in err else 2)

    def write(self, data: bytes) -> None:
        proc = self.run([self.binary, "-"], input=data, capture_output=True)
        if proc.returncode != 0:
            err = proc.stderr.decode(errors="replace").strip()
            raise UserError(_crontab_problem(err), FAILED)


def _crontab_problem(err: str) -> str:
    first = err.splitlines()[0] if err else "crontab failed"
    if "not allowed" in err:
        return f"crontab refused: {first} (see /etc/cron.allow and /etc/cron.deny)"
    return f"crontab failed: {first}"


def cron_escape(text: str) -> str:
    # In a crontab command an unescaped % ends the command and starts its stdin.
    return text.replace("%", r"\%")


def render(job: Job, python: str, state_root: str, flock_binary: Optional[str], isolation: str = "") -> bytes:
    """Our line for `job`. While the lock is held it costs one sh and one flock(1), no Python.

    The launcher runs from / (and with `isolation`, -I or -P): cron starts jobs in $HOME, where a
    stray json.py or dataclasses.py would otherwise shadow the standard library.
    """
    flag = f" {isolation}" if isolation else ""
    launcher = (f"cd / && exec {shlex.quote(python)}{flag} -m watchdog_singleton run --cron "
                f"--state-dir {shlex.quote(state_root)} {job.name}")
    command = guarded(job, launcher, state_root, flock_binary) if flock_binary else launcher
    if len(cron_escape(command)) > MAX_COMMAND and flock_binary:
        # Past cron's cut the line would run half a command: without the check for a dead
        # supervisor it is shorter (a kill -9 of the supervisor is then mended by `restart NAME`).
        command = guarded(job, launcher, state_root, flock_binary, lives=False)
    if len(cron_escape(command)) > MAX_COMMAND:
        raise UserError(f"the crontab line of {job.name} would run a command of {len(cron_escape(command))} bytes, "
                        f"past the {MAX_COMMAND} that cron reads: choose a shorter --lock-dir, state folder "
                        "or interpreter path")
    line = f"{job.cron_schedule} {cron_escape(command)} {TAG}{job.name}"
    if "\n" in line or "\r" in line:
        raise UserError("a newline cannot go into a crontab line")
    return line.encode()


def guarded(job: Job, launcher: str, state_root: str, flock_binary: str, lives: bool = True) -> str:
    """The command of a job's line: the launcher unless its lock is held by a copy that is supervised.

    Only a lock file that is ours is probed; anything odd goes to the launcher, which says why
    (another user's file held in a folder they may write would look like a running copy). A shared
    job's line also checks its resident lives, and a daemon's line its own supervisor (after a kill
    -9 of either the daemon holds the lock on, and the launcher adopts it: supervisor/adopt.py); a
    cluster job's watcher ends its tree with its supervisor, so there is nothing to adopt. The
    paths go into variables, each written once: cron reads MAX_COMMAND bytes of a command.
    """
    held = f"[ $? = {LOCK_HELD} ]"
    check = ("" if job.cluster or not lives else shared_resident_lives(job, state_root) if job.shared else
             own_supervisor_lives(job) if adoptable(job) else "")
    if check:
        held += f" && {{ {check}; }} 2>/dev/null"
    # A job's own supervisor's file names the job too: then the name has a variable of its own.
    lock = (f'n={job.name}; l="$d/$n.lock"' if check and not job.shared else
            f'l="$d"/{shlex.quote(job.name + ".lock")}')  # a valid name needs no quotes (check_name)
    return (f"d={shlex.quote(job.lock_dir)}; {lock}; "
            'test -O "$d" -a ! -h "$d" -a -f "$l" -a -O "$l" -a ! -h "$l" && '
            f'{shlex.quote(flock_binary)} -n -E {LOCK_HELD} "$l" true 2>/dev/null; '
            f"{held} || {{ {launcher}; }}")


def shared_resident_lives(job: Job, state_root: str) -> str:
    """Shell builtins only (no process): true while the shared resident named in its pid file runs.

    A shared job's lock held means its daemon runs, but not that anything supervises it: after a
    kill -9 of the resident the daemon holds the lock on. So the line runs the launcher (which
    adopts it, supervisor/adopt.py) unless the file `PID START`, ours and no symlink, in a folder of
    ours, names a live process of ours with that start time (field 22 of /proc/PID/stat; 3 is its
    state, Z for a zombie). A pid reused by another process would have another start time. The
    stat line is cut through its last ") " first: the name before it (comm, in parentheses) is
    anyone's to choose, spaces and parentheses included, and would shift the fields after it.
    """
    from ..lock.flock import default_lock_dir
    from ..supervisor.housewire import pid_path

    folder = default_lock_dir(state_root, create=False)
    name = shlex.quote(os.path.basename(pid_path(folder, state_root)))
    if folder == job.lock_dir:  # "$d", checked before the flock
        return pid_file_lives(f'h="$d"/{name}; ')
    return pid_file_lives(f'e={shlex.quote(folder)}; h="$e"/{name}; ', '-O "$e" -a ! -h "$e" -a ')


def adoptable(job: Job) -> bool:
    """A job whose own supervisor's death the line looks for: a daemon kept alive by a supervisor
    of its own. Not a periodic job (its run ends on its own; the next tick starts the job), nor a
    lean one (no supervisor), nor a cluster job (its watcher stops the tree with its supervisor)."""
    return not (job.shared or job.periodic or job.lean or job.cluster)


def own_supervisor_lives(job: Job) -> str:
    """Shell builtins only: true while the job's own supervisor named in its `PID START` file
    (lock/supfile.py, in the job's lock folder "$d") runs. A missing file (a supervisor of an older
    version) runs the launcher, which finds that supervisor alive and stamps the file for it."""
    from ..lock.supfile import file_name

    assert file_name("$n").count("$n") == 1
    return pid_file_lives(f'h="$d/{file_name("$n")}"; ')


def pid_file_lives(where: str, checks: str = "") -> str:
    """The test of a `PID START FD` file at "$h" (set by `where`; `checks`: tests of its folder).

    First the cheap test: process PID holds this very file open at FD (`-ef`: same device and
    inode, through /proc/PID/fd, which only our own processes' are to us). No other process holds
    our private file (close-on-exec), a zombie holds nothing, and it costs two stat calls, where
    dash reads /proc/PID/stat a byte a system call. Failing that (a file without FD, written for a
    supervisor of an older version; the file put back after a cleaner, not yet stamped again), the
    start time as before.
    """
    return (f'{where}test {checks}-f "$h" -a -O "$h" -a ! -h "$h" && read p s f < "$h" && '
            '{ [ /proc/"$p"/fd/"$f" -ef "$h" ] || { read -r x < /proc/"$p"/stat && test -O /proc/"$p" && '
            'set -f -- ${x##*) } && [ "${20}" = "$s" -a "$1" != Z ]; }; }')


SPARSE_GAP_MINUTES = 10
def fires_sparsely(schedule: str) -> bool:
    """True for an @-word, or a schedule with a gap of more than ~10 minutes between two ticks.
    @reboot is not sparse: a daemon started at boot and kept alive is what it is for."""
    if schedule.startswith("@"):
        return schedule != "@reboot"
    fields = schedule.split()
    if len(fields) != 5:
        return False
    sets = [expand(f, lo, hi, names) for f, (lo, hi, names) in zip(fields, FIELDS)]
    if any(v is None for v in sets):
        return False
    minutes, hours, days, months, weekdays = (v or set() for v in sets)
    if days != set(range(1, 32)) or months != set(range(1, 13)) or not set(range(7)) <= weekdays | (
            {0} if 7 in weekdays else set()):
        return True  # some days have no tick at all
    ticks = sorted(h * 60 + m for h in hours for m in minutes)
    gaps = [b - a for a, b in zip(ticks, ticks[1:])] + [ticks[0] + 24 * 60 - ticks[-1]]
    return max(gaps) > SPARSE_GAP_MINUTES


def parse_entries(text: bytes) -> dict[str, Entry]:
    entries = {}
    for line in text.split(b"\n"):
        match = LINE_RE.match(line)
        if match:
            name = match.group("name").decode()
            entries[name] = Entry(name, not is_commented(line), line)
    return entries


def with_entry(text: bytes, name: str, line: Optional[bytes]) -> bytes:
    """`text` with our line for `name` replaced by `line` (appended if new; removed if None).

    Every other byte of `text` is kept as it was.
    """
    lines = text.split(b"\n")
    if lines[-1] == b"":
        lines.pop()  # crontab(1) insists on a final newline: the split leaves an empty last piece
    out: list[bytes] = []
    placed = False
    for current in lines:
        match = LINE_RE.match(current)
        if match and match.group("name").decode() == name:
            if line is not None and not placed:
                out.append(line)
                placed = True
            continue
        out.append(current)
    if line is not None and not placed:
        out.append(line)
    return b"\n".join(out) + b"\n" if out else b""


def replace_lines(text: bytes, pairs: list[tuple[bytes, bytes]]) -> bytes:
    """`text` with each original line of `pairs` replaced in place by its new line.

    Every other byte, the final newline (or its absence) included, is kept as it was. Each
    original replaces its first occurrence not replaced yet; one that is not there any more (the
    crontab changed since it was read) is a UserError, and nothing is replaced.
    """
    lines = text.split(b"\n")
    done: set[int] = set()
    for old, new in pairs:
        if b"\n" in new:
            raise UserError("a newline cannot go into a crontab line")
        at = next((k for k, line in enumerate(lines) if line == old and k not in done), None)
        if at is None:
            raise UserError(f"the crontab line {old.decode(errors='replace')!r} changed since it was read; "
                            "nothing was written", FAILED)
        lines[at] = new
        done.add(at)
    return b"\n".join(lines)


def disabled(line: bytes) -> bytes:
    return line if line.startswith(DISABLED.encode()) else DISABLED.encode() + line


def enabled(line: bytes) -> bytes:
    return line[len(DISABLED):] if line.startswith(DISABLED.encode()) else line


class CrontabEditor:
    """Read-modify-write of our lines under a lock, redone if someone else wrote in between."""

    def __init__(self, io: CrontabIO, lock_path: str,
                 before_write: Optional[Callable[[], None]] = None, attempts: int = 5) -> None:
        self.io = io
        self.lock_path = lock_path  # paths.crontab_edit_lock(state folder)
        self.before_write = before_write  # a seam: tests write to the crontab here
        self.attempts = attempts

    def edit(self, change: Callable[[bytes], bytes]) -> bytes:
        release = self._lock()
        try:
            for _ in range(self.attempts):
                before = self.io.read()
                after = change(before)
                if after == before:
                    return after
                if self.before_write:
                    self.before_write()
                if self.io.read() != before:
                    continue  # a foreign write landed since our read: redo the edit on top of it
                self.io.write(after)
                return after
        finally:
            release()
        raise UserError("the crontab kept changing under us; nothing was written", FAILED)

    def _lock(self) -> Callable[[], None]:
        """Take the edit lock; return its release. A file system without locks gets no lock."""
        import threading

        import fasteners

        files.ensure_dir(os.path.dirname(self.lock_path))
        try:
            # Created here, 0600 and never through a symlink: fasteners would open(path, "a").
            os.close(os.open(self.lock_path, files.CREATE_FLAGS, 0o600))
        except OSError as exc:
            raise UserError(f"cannot open the crontab edit lock {self.lock_path}: {exc.strerror}", FAILED) from None
        lock = fasteners.InterProcessLock(self.lock_path)
        try:
            lock.acquire()
        except threading.ThreadError as exc:
            cause = exc.__context__
            if isinstance(cause, OSError) and cause.errno in (errno.ENOLCK, errno.ENOSYS):
                return lambda: None  # an odd home file system: the re-read before the write still guards
            raise UserError(f"cannot lock {self.lock_path}: {cause or exc}", FAILED) from None
        release: Callable[[], None] = lock.release
        return release

    def entries(self) -> dict[str, Entry]:
        return parse_entries(self.io.read())

    def set_entry(self, name: str, line: Optional[bytes]) -> bytes:
        return self.edit(lambda text: with_entry(text, name, line))

    def set_enabled(self, name: str, on: bool) -> bool:
        """Comment our line in or out; False if NAME has no line, or to enable one that was
        commented out by hand (the caller writes a fresh line instead)."""
        found = []

        def change(text: bytes) -> bytes:
            entry = parse_entries(text).get(name)
            if entry is None or entry.enabled == on:
                found.append(entry is not None)
                return text  # missing, or already as wanted (a hand-commented line is off already)
            line = enabled(entry.line) if on else disabled(entry.line)
            if is_commented(line) and on:
                found.append(False)  # commented out by hand: only a fresh line turns it on
                return text
            found.append(True)
            return with_entry(text, name, line)

        self.edit(change)
        return bool(found and found[-1])
