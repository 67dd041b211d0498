"""Failure notification: run the job's --on-failure hook and send its --mail when it fails where
nobody looks (the crash loop, the periodic run that fails, the lost lease, the ended batch chain,
the farm with failed tasks).

    notify.job_event(job, "backoff", code, detail, env, note)    # the supervisor: returns at once

Each event kind is notified at most once per `--notify-every` seconds (the times sent are kept in
the job's state folder, `.notify.json`), so a crash loop is one message, not thousands. The hook
and the mail go out from a notifier process of their own: a fresh `python -I -S` (standard library
only) that the caller does not wait for, so a restart is never delayed. The notifier carries a
marker of its own, not the job's, so it and the hook are never taken for part of the job's tree
(a stop passes them by); a hook that runs longer than HOOK_TIMEOUT seconds has its whole tree
stopped. The mail is one plain message through the host's sendmail (`sendmail -t -oi`), as cron's.
"""

from __future__ import annotations

import os
import time

from .. import files, paths
from ..envvars import (
    DETAIL_ENV,
    EVENT_ENV,
    EXIT_ENV,
    HOOK_TIMEOUT_ENV,
    JOB_ENV,
    NAME_ENV,
    SENDMAIL_ENV,
    STATE_DIR_ENV,
    STDERR_LOG_ENV,
    STDOUT_LOG_ENV,
    TOKEN_ENV,
)
from ..errors import UserError
from ..proc import procs
from ..timefmt import iso
from .model import check_hook as check_hook  # the checks of --on-failure and --mail live with a job's
from .model import check_mail as check_mail  # other checks (model.py, build.py); named here as before
from .options import OPTIONS

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing stays out of the resident supervisor's memory; annotations are strings
    from typing import Any, Callable, Optional

    from .model import Job

# What each event kind means, in the words of the mail's subject and the log.
EVENTS = {
    "backoff": "restarts in a crash loop (backoff)",
    "run-failed": "a periodic run failed",
    "run-timeout": "a periodic run timed out",
    "lease-lost": "lost its cluster lease",
    "chain-ended": "its batch chain ended for good",
    "farm-failed": "a farm finished with failed tasks",
}
DEFAULT_EVERY: float = OPTIONS["notify_every"].default
HOOK_TIMEOUT = 30.0  # a hook (or sendmail) still running after this long has its tree stopped
STOP_GRACE = 2.0
TAIL_LINES = 20
RESULT_EVENTS = {"failed": "run-failed", "timed out": "run-timeout"}  # periodic.PeriodicRuns.finished's words
STATE_FILE = ".notify.json"  # in the job's state folder: event kind -> when it was last notified
MARK = "#notify"  # appended to the job's marker: the notifier's own, never the job's tree
BOOT = ("import sys; sys.path.append(sys.argv[1]); from watchdog_singleton.job.notify import main; "
        "sys.exit(main(sys.argv[2:]))")


# -- the rate limit ------------------------------------------------------------------------------
def due(sent: dict[str, Any], event: str, now: float, every: float) -> bool:
    """Whether `event` may be notified at wall time `now`, given when each kind was last sent.
    A time in the future (the clock was set back) does not silence the kind for good."""
    last = sent.get(event)
    if not isinstance(last, (int, float)):
        return True
    return now - last >= every or now < last


def claim(folder: str, event: str, now: float, every: float) -> bool:
    """Decide for `event` and, when it is due, record `now` as its time (in `folder`/.notify.json)."""
    path = os.path.join(folder, STATE_FILE)
    try:
        sent = files.read_json(path) or {}
    except UserError:
        sent = {}
    if not due(sent, event, now, every):
        return False
    sent[event] = now
    try:
        files.ensure_dir(folder)
        files.write_json(path, sent, durable=False)
    except (OSError, UserError):
        pass  # a notice too many beats a notice lost
    return True


# -- sending (the caller's side) ----------------------------------------------------------------
def wanted(job: Job) -> bool:
    return bool(getattr(job, "on_failure", None) or getattr(job, "mail", ""))


def job_event(job: Job, event: str, code: Optional[int], detail: str,
              note: Optional[Callable[[str], None]] = None, inherit: Optional[dict[str, str]] = None,
              env: Optional[dict[str, str]] = None, wall: Callable[[], float] = time.time) -> bool:
    """Notify `event` of `job` if it has a hook or a mail and the kind is due; never raises, never
    waits for the hook. The hook's environment is `env`, else the daemon's (daemonenv.daemon_env
    of `inherit`). `note` writes to the job's log. True when a notice went out."""
    if not event or not wanted(job):
        return False
    say = note or (lambda text: None)
    try:
        if not job.state_folder or not claim(job.state_folder, event, wall(), job.notify_every):
            return False
        if env is None:
            from .daemonenv import daemon_env

            env = daemon_env(job, inherit)
        payload = {"name": job.name, "event": event, "code": code, "detail": detail, "argv": list(job.on_failure),
                   "mail": job.mail, "workdir": job.workdir, "stdout_log": job.stdout_log,
                   "stderr_log": job.stderr_log, "command": list(job.command), "every": job.notify_every}
        pid = launch(payload, hook_env(env, payload, job.lock_path))
        said = " and ".join(([f"hook {job.on_failure[0]}"] if job.on_failure else [])
                            + ([f"mail to {job.mail}"] if job.mail else []))
        say(f"failure notice ({event}): {said} (notifier pid {pid}); the next {event} notice "
            f"after {job.notify_every:g} s at the earliest")
        return True
    except Exception as exc:  # a notice must never stop the supervisor
        say(f"failure notice ({event}) could not be sent: {exc}")
        return False


def hook_env(env: dict[str, str], payload: dict[str, Any], token: str) -> dict[str, str]:
    """The hook's environment: the job's, what happened, and a marker that is not the job's."""
    out = dict(env)
    code = payload.get("code")
    out.update({EVENT_ENV: payload["event"], JOB_ENV: payload["name"], NAME_ENV: payload["name"],
                EXIT_ENV: "" if code is None else str(code), DETAIL_ENV: str(payload.get("detail", "")),
                STDOUT_LOG_ENV: payload.get("stdout_log", ""), STDERR_LOG_ENV: payload.get("stderr_log", "")})
    out[TOKEN_ENV] = token + MARK
    return out


def launch(payload: dict[str, Any], env: dict[str, str]) -> int:
    """Start the notifier (a fresh interpreter, in a session of its own) and return its pid; it is
    not waited for here: the supervisor's reaping collects it, like any child of the tree."""
    import sys

    from ..lightjson import dumps
    from ..proc.spawn import spawn

    parent = paths.PACKAGE_PARENT
    argv = [sys.executable, "-I", "-S", "-c", BOOT, parent, dumps(payload)]
    return spawn(argv, "/", env, (), capture=False).pid


# -- the notifier ---------------------------------------------------------------------------------
def main(argv: list[str]) -> int:
    """The notifier's entry: `python -I -S -c BOOT PARENT PAYLOAD`, the hook's environment its own."""
    import json

    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)  # nothing of ours goes to whoever started the supervisor
    os.close(null)
    payload = json.loads(argv[0])
    deliver(payload, dict(os.environ), hook_timeout(os.environ))
    return 0


def hook_timeout(env: Any) -> float:
    try:
        return min(3600.0, max(1.0, float(env.get(HOOK_TIMEOUT_ENV) or HOOK_TIMEOUT)))
    except ValueError:
        return HOOK_TIMEOUT


def deliver(payload: dict[str, Any], env: dict[str, str], timeout: float = HOOK_TIMEOUT) -> list[str]:
    """Send the mail and run the hook (each stopped after `timeout`); what happened, one line each,
    also written to the job's stderr log."""
    said = []
    if payload.get("mail"):
        said.append(send_mail(payload, env, timeout))
    if payload.get("argv"):
        said.append(run_hook(payload, env, timeout))
    log = payload.get("stderr_log") or ""
    for line in said:
        files.append_note(log, line)
    return said


def run_hook(payload: dict[str, Any], env: dict[str, str], timeout: float) -> str:
    """Run the hook in a session of its own, its output appended to the job's stderr log; stop its
    whole tree (the marker finds it after setsid and double forks) once `timeout` has passed."""
    import subprocess

    argv = list(payload["argv"])
    env = dict(env)
    env[TOKEN_ENV] = f"{env.get(TOKEN_ENV, '')}.{os.getpid()}"  # this notifier's hook only
    log = payload.get("stderr_log") or ""
    out: Any = subprocess.DEVNULL
    if log:
        try:
            out = os.fdopen(files.open_log_file(log), "ab")  # never through a symlink, nor into a FIFO
        except OSError:
            pass
    cwd = payload.get("workdir") or "/"
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env,
                                cwd=cwd if os.path.isdir(cwd) else "/", start_new_session=True)
    except OSError as exc:
        return f"failure notice ({payload['event']}): cannot run hook {argv[0]}: {exc.strerror or exc}"
    finally:
        if out is not subprocess.DEVNULL:
            out.close()
    try:
        code = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        stop_tree(env[TOKEN_ENV], proc.pid, proc.poll)
        proc.wait()  # reaped by the Stopper's poll already, or now
        return (f"failure notice ({payload['event']}): hook {argv[0]} still ran after {timeout:g} s: "
                "its tree was stopped")
    return f"failure notice ({payload['event']}): hook {argv[0]} {procs.exit_text(code)}"


def stop_tree(token: str, pid: int, poll: Callable[[], object]) -> None:
    """SIGTERM to the hook's tree, SIGKILL after STOP_GRACE, rescanning until nothing is left."""
    from ..proc.stop import stop_job
    from ..proc.tree import Stopper

    def reap() -> None:
        poll()  # our child must be reaped to be seen gone

    stop_job(token, STOP_GRACE, roots=lambda: (pid,), stopper=Stopper(reap=reap))


def sendmail_program(env: dict[str, str]) -> Optional[str]:
    import shutil

    explicit = env.get(SENDMAIL_ENV)
    if explicit:
        return explicit
    return (shutil.which("sendmail", path=env.get("PATH")) or
            next((p for p in ("/usr/sbin/sendmail", "/usr/lib/sendmail") if os.access(p, os.X_OK)), None))


def send_mail(payload: dict[str, Any], env: dict[str, str], timeout: float) -> str:
    import subprocess

    event = payload["event"]
    program = sendmail_program(env)
    if program is None:
        return (f"failure notice ({event}): no sendmail on this host (PATH, /usr/sbin, /usr/lib): "
                f"the mail to {payload['mail']} was not sent")
    message = mail_text(payload, os.uname().nodename, time.time())
    mail_env = {k: v for k, v in env.items() if k != TOKEN_ENV}
    mail_env[TOKEN_ENV] = f"{env.get(TOKEN_ENV, '')}.mail{os.getpid()}"
    try:
        proc = subprocess.run([program, "-t", "-oi"], input=message, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, env=mail_env, timeout=timeout, start_new_session=True)
    except OSError as exc:
        return f"failure notice ({event}): cannot run {program}: {exc.strerror or exc}"
    except subprocess.TimeoutExpired:
        return f"failure notice ({event}): {program} did not finish within {timeout:g} s"
    if proc.returncode != 0:
        why = (proc.stderr.decode(errors="replace").strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
        return f"failure notice ({event}): {program} failed for {payload['mail']}: {why}"
    return f"failure notice ({event}): mailed {payload['mail']}"


def tail(path: str, count: int) -> list[str]:
    """The last `count` lines of `path` (read from its last 64 KiB); [] when it cannot be read."""
    data = files.read_own_file(path, 65536)  # a symlink planted at the log's path is not mailed
    if data is None:
        return []
    lines = data.decode(errors="replace").splitlines()
    if len(data) == 65536 and lines:
        lines = lines[1:]  # the first may be cut
    return lines[-count:]


def mail_text(payload: dict[str, Any], host: str, now: float) -> bytes:
    """One plain message: the job, the event, the host, the end of the stderr log, and how to see more."""
    name, event = payload["name"], payload["event"]
    what = EVENTS.get(event, event)
    code = payload.get("code")
    log = payload.get("stderr_log") or ""
    lines = [f"To: {payload['mail']}",
             f"Subject: watchdog-singleton: {name} on {host}: {what}",
             "Auto-Submitted: auto-generated",
             "MIME-Version: 1.0",
             "Content-Type: text/plain; charset=utf-8",
             "Content-Transfer-Encoding: 8bit",
             "",
             f"Job:       {name}",
             f"Event:     {event}: {what}",
             f"Host:      {host}",
             f"When:      {iso(now)}",
             f"Last exit: {'-' if code is None else code}"]
    if payload.get("detail"):
        lines.append(f"Detail:    {payload['detail']}")
    if payload.get("command"):
        import shlex

        lines.append(f"Command:   {shlex.join(payload['command'])}")
    lines.append("")
    end = tail(log, TAIL_LINES) if log else []
    if end:
        lines.append(f"The last {len(end)} lines of {log}:")
        lines += [f"  {line}" for line in end]
    elif log:
        lines.append(f"{log} is empty or cannot be read.")
    lines += ["", f"More: watchdog-singleton logs {name} --stderr -n 200",
              f"At most one such mail per {float(payload.get('every', DEFAULT_EVERY)):g} s for this event "
              f"(--notify-every)."]
    # A lone "." would end the message for a sendmail without -oi; a space keeps it.
    return ("\n".join(" ." if line == "." else line for line in lines) + "\n").encode(errors="replace")


# -- outside the supervisor: a batch chain, a farm ----------------------------------------------
def record_event(record: dict[str, Any], state_folder: str, event: str, code: Optional[int], detail: str,
                 wait: bool) -> bool:
    """Notify `event` for a job known by its submission record (batch) rather than a definition.
    With `wait`, deliver here and now (a batch job's end may take its process group with it)."""
    hook, mail = list(record.get("on_failure") or []), str(record.get("mail") or "")
    if not (hook or mail):
        return False
    every = float(record.get("notify_every") or DEFAULT_EVERY)
    if not claim(state_folder, event, time.time(), every):
        return False
    name = str(record.get("name", ""))
    env = {k: v for k, v in os.environ.items()}
    payload = {"name": name, "event": event, "code": code, "detail": detail, "argv": hook, "mail": mail,
               "workdir": record.get("workdir") or "/", "stdout_log": record.get("stdout_log") or "",
               "stderr_log": record.get("stderr_log") or "", "command": list(record.get("command") or []),
               "every": every}
    token = env.get(TOKEN_ENV) or os.path.join(state_folder, name)
    env = hook_env(env, payload, token)
    if wait:
        deliver(payload, env, hook_timeout(env))
    else:
        launch(payload, env)
    return True


def batch_main(argv: list[str]) -> int:
    """`watchdog-singleton _notify ROOT NAME EVENT CODE [DETAIL]`: what a batch script calls when its
    chain ends for good (not through `stop`). Quiet, exit 0 whatever happens: the chain is over."""
    try:
        root, name, event, code_text = argv[:4]
        detail = argv[4] if len(argv) > 4 else ""
        from .. import paths

        folder = paths.job_state_dir(root, name)
        record = files.read_json(os.path.join(paths.batch_dir(root, name), "submission.json"))
        if record is not None:
            code = int(code_text) if code_text.lstrip("-").isdigit() else None
            record_event(record, folder, event, code, detail, wait=True)
    except Exception:
        pass
    return 0


def from_environment(event: str, code: Optional[int], detail: str) -> bool:
    """Notify `event` for the job this process runs in (a farm under `install` or `submit`), if any:
    found through WATCHDOG_SINGLETON_JOB and, for a batch chain, its state folder's record."""
    name = os.environ.get(JOB_ENV)
    if not name:
        return False
    try:
        from .. import paths
        from .model import JobStore

        folder = os.environ.get(STATE_DIR_ENV, "")
        # The job's folder is STATE/job-state/NAME beside STATE/HOST, the folder of its definition
        # (the job's environment need not say where XDG_STATE_HOME was at install).
        root = os.path.join(os.path.dirname(os.path.dirname(folder)), paths.host()) if folder else paths.state_dir()
        job = JobStore(root).load(name)
        if job is not None:
            return job_event(job, event, code, detail, env=dict(os.environ))
        record = files.read_json(os.path.join(folder, ".batch", "submission.json")) if folder else None
        if record is not None:
            return record_event(record, folder, event, code, detail, wait=False)
    except Exception:
        pass
    return False
