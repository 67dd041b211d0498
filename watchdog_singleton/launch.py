"""`watchdog-singleton run`: what cron runs each tick. Standard library and our light modules only.

Takes NAME's lock; if another copy holds it, exits 0 at once and prints nothing (cron mails
whatever a job prints). Otherwise it becomes NAME's supervisor, or with --detach starts one
in the background and returns once the daemon runs.
"""

from __future__ import annotations

import os
import sys
import time
from types import SimpleNamespace

from . import paths, procs
from .errors import FAILED, OK, UserError
from .jobs import Job, JobStore, check_name, now_iso, parse_env, resolve_command
from .lock import REPAIRED, FlockLock, check_lock_dir
from .state import RunState, StateStore

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing stays out of the resident supervisor's memory; annotations are strings
    import argparse
    from typing import Callable, Optional

MANUAL_LOCK_WAIT = 1.0  # a manual start waits out a cron pre-check's brief hold of the lock


def parser() -> "argparse.ArgumentParser":
    import argparse

    p = argparse.ArgumentParser(
        prog="watchdog-singleton run",
        description="Run NAME under its singleton lock (what cron calls). With -- COMMAND, run that "
                    "command under NAME's lock without any install.")
    p.add_argument("name")
    p.add_argument("--detach", action="store_true", help="return once the daemon runs")
    p.add_argument("--cron", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--state-dir", help=argparse.SUPPRESS)
    p.add_argument("--lock-dir", help="ad-hoc runs: where the lock lives")
    p.add_argument("--log-dir", help="ad-hoc runs: write output to NAME's log files here")
    p.add_argument("--workdir", help="ad-hoc runs: working directory (default: here)")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--grace", type=float, default=10.0, help="seconds from SIGTERM to SIGKILL")
    p.add_argument("--restart", choices=("always", "on-failure", "never"), default="never",
                   help="ad-hoc runs: restart policy (default never: exit with the command's code)")
    p.add_argument("--allow-network-fs", action="store_true")
    p.add_argument("command", nargs=argparse.REMAINDER)
    return p


def quick_parse(argv: list[str]) -> Optional[SimpleNamespace]:
    """The two shapes our own crontab lines and `start` use, parsed without argparse, whose
    import would stay in the resident supervisor's memory for the daemon's whole life."""
    args = SimpleNamespace(detach=False, cron=False, state_dir=None, lock_dir=None, log_dir=None, workdir=None,
                           env=[], grace=10.0, restart="never", allow_network_fs=False, command=[], name=None)
    rest = list(argv)
    while rest:
        word = rest.pop(0)
        if word in ("--cron", "--detach"):
            setattr(args, word[2:], True)
        elif word == "--state-dir" and rest:
            args.state_dir = rest.pop(0)
        elif not word.startswith("-") and args.name is None:
            args.name = word
        else:
            return None
    return args if args.name is not None else None


def main(argv: list[str]) -> int:
    args = quick_parse(argv)
    if args is None:
        args = SimpleNamespace(**vars(parser().parse_args(argv)))
        if args.command[:1] == ["--"]:
            args.command = args.command[1:]
    try:
        return launch(args)
    except UserError as exc:
        print(f"watchdog-singleton: {exc}", file=sys.stderr)
        return exc.exit_code


def adhoc_job(args: SimpleNamespace, root: str) -> Job:
    name = check_name(args.name)
    workdir = os.path.abspath(args.workdir or os.getcwd())
    lock_dir = os.path.abspath(args.lock_dir) if args.lock_dir else paths.default_lock_dir()
    check_lock_dir(lock_dir, args.allow_network_fs)
    env = parse_env(args.env)
    job = Job(name=name, command=resolve_command(args.command, workdir, os.environ.get("PATH")),
              workdir=workdir, env=env, grace=args.grace, restart=args.restart,
              lock_dir=lock_dir, allow_network_fs=args.allow_network_fs)
    if args.log_dir or args.detach:
        log_dir = os.path.abspath(args.log_dir) if args.log_dir else paths.default_log_dir(root)
        job.stdout_log, job.stderr_log = paths.log_files(log_dir, name)
    return job


def launch(args: SimpleNamespace) -> int:
    root = os.path.abspath(args.state_dir) if args.state_dir else paths.state_dir()
    adhoc = bool(args.command)
    if args.cron and not adhoc and JobStore(root).load(check_name(args.name)) is None:
        return OK  # an orphan line (uninstalled while crontab edits were refused): nothing to run
    job = adhoc_job(args, root) if adhoc else JobStore(root).get(check_name(args.name))
    if args.cron and not job.enabled:
        return OK
    states = StateStore(root)
    lock = FlockLock(job.lock_dir, job.name)
    if not acquire(lock, job, states, patient=not args.cron):
        return OK
    if args.cron:
        # Re-read after locking: a stop or uninstall may have raced this tick.
        current = JobStore(root).load(job.name)
        if current is None or not current.enabled:
            lock.release()
            return OK
    passthrough = adhoc and not job.stdout_log
    # From cron, always in the background: cron's child (and its mail pipe) must not live as
    # long as the daemon.
    background = args.detach or args.cron
    if job.lean and not adhoc:
        return run_lean(job, lock, states, background)
    if background:
        return detach(lambda ready: supervise(job, lock, states, adhoc, passthrough, ready), lock)
    return supervise(job, lock, states, adhoc, passthrough, None)


def acquire(lock: FlockLock, job: Job, states: StateStore, patient: bool) -> bool:
    """Take NAME's lock unless a copy of NAME runs; False means: leave, all is well."""
    deadline = time.monotonic() + (MANUAL_LOCK_WAIT if patient else 0.0)
    while not lock.try_acquire():
        state = states.load(job.name)
        running = state is not None and (state.supervisor_alive() or state.daemon_alive())
        if running or time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return settle(lock, job, states)


def settle(lock: FlockLock, job: Job, states: StateStore,
           before_claim: Optional[Callable[[], None]] = None) -> bool:
    """Just after our flock: make sure this process is the one copy, or release and leave.

    `before_claim` is a seam for tests: a racing launcher runs there.
    """
    state = states.load(job.name)
    if state is not None and (state.supervisor_alive() or state.daemon_alive()):
        # Alive although we got the lock: its lock file was deleted (a /tmp cleaner).
        lock.release()
        return False
    if before_claim:
        before_claim()
    claim(job, states, state)
    # Had the file been deleted between our flock and our claim, a racing launcher could hold a
    # fresh one now: whoever holds the file at the path goes on, the other leaves.
    if not lock.still_ours() and lock.repair() != REPAIRED:
        lock.release()
        return False
    clear_debris(job)
    return True


def claim(job: Job, states: StateStore, state: Optional[RunState]) -> None:
    """Record at once that this process holds NAME's lock, before any daemon starts.

    Should the lock file be deleted now, a launcher that takes a fresh one finds this claim
    alive and leaves, instead of starting a second copy.
    """
    me = os.getpid()
    state = state or RunState(name=job.name)
    state.phase, state.boot_id, state.lock_path = "starting", procs.boot_id(), job.lock_path
    state.supervisor_pid, state.supervisor_start = me, procs.start_time(me)
    state.pid = state.pid_start = None
    states.save(state)


def clear_debris(job: Job) -> None:
    """End what is left of a dead tree (its daemon and supervisor both gone), so that it cannot
    run beside the new copy; its processes carry the job's token in their environment."""
    table = procs.all_procs()
    leftovers = procs.marked_with(table, job.lock_path)
    if leftovers:
        procs.Killer().terminate(procs.identities(table, leftovers), job.grace)


def supervise(job: Job, lock: FlockLock, states: StateStore, adhoc: bool, passthrough: bool,
              ready: Optional[Callable[[Optional[str]], None]]) -> int:
    from .supervisor import Supervisor

    inherit = dict(os.environ) if adhoc else None
    return Supervisor(job, lock, states, adhoc=adhoc, passthrough=passthrough,
                      inherit_env=inherit, ready=ready).run()


def detach(body: Callable[[Callable[[Optional[str]], None]], int], lock: FlockLock,
           exec_is_ready: bool = False) -> int:
    """Run `body` in a new session in the background; return once it reports readiness.

    With `exec_is_ready`, the child becoming another program (exec closes the O_CLOEXEC pipe
    without a word) counts as ready.
    """
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        code = FAILED
        reported = False

        def ready(problem: Optional[str]) -> None:
            nonlocal reported
            if not reported:
                reported = True
                os.write(write_end, (problem or "ok").encode())
                os.close(write_end)

        try:
            os.setsid()
            null = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(null, fd)
            os.close(null)
            code = body(ready)
        except BaseException as exc:  # the parent prints it: the child has no terminal any more
            ready(f"the supervisor failed: {exc.__class__.__name__}: {exc}")
        finally:
            os._exit(code)
    os.close(write_end)
    lock.release()  # the child holds the same lock; our copy must not outlive a quick daemon
    chunks = []
    while True:
        chunk = os.read(read_end, 4096)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(read_end)
    answer = b"".join(chunks).decode(errors="replace")
    if answer == "ok" or (exec_is_ready and not answer):
        return OK
    print(f"watchdog-singleton: {answer or 'the supervisor exited before the daemon started'}",
          file=sys.stderr)
    return FAILED


def run_lean(job: Job, lock: FlockLock, states: StateStore, background: bool) -> int:
    """Lean mode: no resident process of ours. The daemon holds the lock and writes the files."""
    from .files import CREATE_FLAGS
    from .supervisor import daemon_env

    def become_daemon() -> None:
        out = os.open(job.stdout_log, CREATE_FLAGS | os.O_APPEND, 0o600)
        err = os.open(job.stderr_log, CREATE_FLAGS | os.O_APPEND, 0o600)
        null = os.open(os.devnull, os.O_RDONLY)
        for fd, target in ((null, 0), (out, 1), (err, 2)):
            os.dup2(fd, target)
            os.close(fd)
        for fd in lock.inheritable_fds():
            os.set_inheritable(fd, True)
        os.chdir(job.workdir)
        try:
            os.setsid()
        except OSError:
            pass  # already a session leader
        me = os.getpid()
        states.save(RunState(name=job.name, phase="running", boot_id=procs.boot_id(), pid=me,
                             pid_start=procs.start_time(me), started_at=now_iso(), command=job.command,
                             lock_path=job.lock_path, stdout_log=job.stdout_log,
                             stderr_log=job.stderr_log, lean=True))
        os.execve(job.command[0], job.command, daemon_env(job))

    from .files import ensure_dir

    ensure_dir(os.path.dirname(job.stdout_log))
    ensure_dir(os.path.dirname(job.stderr_log))
    if not background:
        become_daemon()
    return detach(lambda ready: _lean_child(become_daemon, ready), lock, exec_is_ready=True)


def _lean_child(become_daemon: Callable[[], None], ready: Callable[[Optional[str]], None]) -> int:
    try:
        become_daemon()  # returns only if exec failed
    except OSError as exc:
        ready(f"cannot start: {exc.strerror}")
    return FAILED
