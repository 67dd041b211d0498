"""`watchdog-singleton run`: what cron runs each tick. Standard library and our light modules only.

Takes NAME's lock; if another copy holds it, exits 0 at once and prints nothing (cron mails
whatever a job prints). Otherwise it becomes NAME's supervisor, or with --detach starts one
in the background and returns once the daemon runs.
"""

from __future__ import annotations

import os
import sys
import time

from .. import paths
from ..envvars import JOB_ENV, TOKEN_ENV
from ..errors import FAILED, OK, UserError
from ..job.model import Job, JobStore, check_name
from ..job.options import RUN
from ..lock.flock import REPAIRED, FlockLock
from ..lock.supfile import SupervisorFile
from ..proc import procs
from ..proc.children import become_subreaper
from ..state.phases import Phase
from ..state.store import CARRIED, UNSEEN, RunState, StateStore
from ..timefmt import now_iso
from . import runargs
from .becoming import memfd_of

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing stays out of the resident supervisor's memory; annotations are strings
    from typing import Callable, Optional

MANUAL_LOCK_WAIT = 1.0  # a manual start waits out a cron pre-check's brief hold of the lock


def main(argv: list[str]) -> int:
    name = "run"
    try:
        args = runargs.parse(argv)
        if args.help:
            print(runargs.HELP, end="")
            return OK
        name = args.name or name
        return launch(args)
    except UserError as exc:
        print(f"watchdog-singleton: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:
        # Environmental trouble (a full or vanished folder, EIO, too many processes): one line
        # for cron to mail, never a traceback; the next tick tries again.
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"watchdog-singleton: {name}: {exc.strerror or exc}{where}; the next tick retries", file=sys.stderr)
        return FAILED


def adhoc_job(args: runargs.RunArgs, root: str) -> Job:
    """`run NAME -- COMMAND`: the one build of a job (job/build.py) from run's options. Its output
    goes to log files only with --log-dir or --detach; else to this terminal."""
    from ..job.build import build_job  # an ad-hoc run's only: a cron tick of an installed job never loads it

    return build_job(args, root, dict(os.environ), command=RUN, logs=bool(args.log_dir or args.detach))


def launch(args: runargs.RunArgs) -> int:
    root = os.path.abspath(args.state_dir) if args.state_dir else paths.state_dir()
    adhoc = bool(args.command)
    if args.cron and not adhoc and JobStore(root).load(check_name(args.name)) is None:
        return OK  # an orphan line (uninstalled while crontab edits were refused): nothing to run
    job = adhoc_job(args, root) if adhoc else JobStore(root).get(check_name(args.name))
    if args.settle is not None:
        job.settle = args.settle
    if args.cron:
        # A tick returns once the daemon is started: a daemon that dies at once is the
        # supervisor's to restart, not a mail every minute.
        job.settle = 0.0
    if args.cron and not job.enabled:
        return OK
    states = StateStore(root)
    supfile = None if adhoc or job.shared or job.lean or job.cluster else SupervisorFile(job.lock_dir, job.name)
    if supfile is not None and not take_supfile(supfile, job, states, patient=not args.cron):
        return OK if args.cron else report_held(job, states, args.detach)  # NAME's supervisor holds it
    lock = FlockLock(job.lock_dir, job.name)
    if not acquire(lock, job, states, patient=not args.cron):
        if args.cron and job.shared and not adhoc:
            return adopt_shared(job, states, root)
        if args.cron and supfile is not None:
            return adopt_own(job, supfile, states, root)
        if supfile is not None:
            supfile.release()
        return OK if args.cron else report_held(job, states, args.detach)
    if args.cron:
        # Re-read after locking: a stop or uninstall may have raced this tick.
        current = JobStore(root).load(job.name)
        if current is None or not current.enabled:
            lock.release()
            if supfile is not None:
                supfile.release()
            return OK
    passthrough = adhoc and not job.stdout_log
    # From cron, always in the background: cron's child (and its mail pipe) must not live as
    # long as the daemon.
    background = args.detach or args.cron
    if job.lean and not adhoc:
        return run_lean(job, lock, states, background)
    history = previous_history(states, job.name)
    if job.shared and not adhoc:
        return hand_over_shared(job, lock, root, history, quiet=args.cron or not args.detach)
    if background:
        return detach(lambda ready_fd: exec_supervisor(job, lock, root, adhoc, passthrough, ready_fd, history,
                                                       supfile=supfile),
                      lock, job.name, quiet=args.cron, also=supfile.lock if supfile is not None else None)
    exec_supervisor(job, lock, root, adhoc, passthrough, None, history, supfile=supfile)
    return FAILED  # not reached: exec_supervisor replaces this process


def hand_over_shared(job: Job, lock: FlockLock, root: str, history: dict[str, object], quiet: bool) -> int:
    """A shared job (install --shared): hand NAME to the user's shared resident, or become it."""
    from .handover import REFUSED, exec_house, find_house

    answer, house = find_house(job, lock, root, history)
    if house is not None:
        return detach(lambda ready_fd: exec_house(job, lock, house, root, ready_fd, history), lock, job.name,
                      quiet=quiet, also=house)
    if answer is not None and answer.startswith(REFUSED):  # it has no room: NAME as if not shared, said once
        note = f"{answer[len(REFUSED):]}: {job.name} runs under a supervisor of its own"
        return detach(lambda ready_fd: exec_supervisor(job, lock, root, False, False, ready_fd, history, note),
                      lock, job.name, quiet=quiet)
    lock.release()  # the resident holds it now (and so will the daemon), or nobody could take NAME
    if answer is None:
        print(f"watchdog-singleton: {job.name}: the shared supervisor neither answers nor exits; "
              "the next tick retries", file=sys.stderr)
        return FAILED
    return tell(answer, job.name, quiet)


def adopt_shared(job: Job, states: StateStore, root: str) -> int:
    """A shared job's lock is held: if by its daemon alone, its resident having died, become a
    new resident that adopts it and every other daemon the dead one left (supervisor/adopt.py)."""
    from .handover import exec_house, rescue

    house = rescue(job, states.load(job.name), root)
    if house is None:
        return OK
    return detach(lambda ready_fd: exec_house(None, None, house, root, ready_fd, {}), house, job.name, quiet=True)


def take_supfile(supfile: SupervisorFile, job: Job, states: StateStore, patient: bool) -> bool:
    """Take the flock of NAME's supervisor file (lock/supfile.py) before NAME's lock: False when
    NAME's supervisor (or a tick about to be one) holds it. A file we must not use (another user's,
    a symlink) is refused with one line, unless NAME's recorded supervisor lives (then all is well)."""
    deadline = time.monotonic() + (MANUAL_LOCK_WAIT if patient else 0.0)
    while True:
        try:
            if supfile.try_acquire():
                return True
        except UserError:
            state = states.load(job.name)
            if state is not None and state.supervisor_alive():
                return False
            raise
        state = states.load(job.name)
        alive = state is not None and state.supervisor_alive()
        if alive or time.monotonic() >= deadline:
            if alive and not patient and state is not None and state.phase in SETTLED:
                # The line ran us although it lives: its lock file, or this file, is missing or
                # not as it was (a /tmp cleaner). It puts them back at once, not at its next check.
                ask_to_look(state)
            return False
        time.sleep(0.05)


def adopt_own(job: Job, supfile: SupervisorFile, states: StateStore, root: str) -> int:
    """A tick found NAME's lock held, and holds NAME's supervisor file (so no supervisor of NAME
    holds it). A live supervisor on record (of an older version, which keeps no file) gets its
    `PID START` written, so the crontab line leaves in the shell again. A dead one whose daemon runs
    on: become NAME's supervisor, adopting that daemon (supervisor/adopt.py). Anything else: leave."""
    from ..supervisor.adopt import orphan

    state = states.load(job.name)
    current = JobStore(root).load(job.name)  # a stop or uninstall may have raced this tick
    if state is not None and state.supervisor_alive() and state.supervisor_pid is not None:
        supfile.stamp(state.supervisor_pid, state.supervisor_start, holds=False)
    if current is None or not current.enabled or not orphan(current, state, procs.is_alive):
        supfile.release()  # a periodic run ends on its own; the next tick starts the job again
        return OK
    assert state is not None
    history = previous_history(states, job.name)
    lock = FlockLock(job.lock_dir, job.name)  # not ours: its daemon's until it ends (adopt.Borrowed)
    return detach(lambda ready_fd: exec_supervisor(current, lock, root, False, False, ready_fd, history,
                                                   supfile=supfile, adopt=state.to_dict()),
                  lock, job.name, quiet=True, also=supfile.lock)


def report_held(job: Job, states: StateStore, detach: bool) -> int:
    """A manual run found the lock taken: say by whom. A live copy of NAME is no failure."""
    state = states.load(job.name)
    if state is not None and (state.supervisor_alive() or state.daemon_alive()):
        pid = state.pid if state.daemon_alive() else state.supervisor_pid
        if detach:
            print(f"{job.name} already runs: pid {pid}")
        return OK
    holders = sorted(procs.holding_file(procs.scan(), job.lock_path))
    who = ", ".join(f"pid {pid} ({procs.command_line(pid)[:80]})" for pid in holders) or "a process we cannot see"
    print(f"watchdog-singleton: {job.name} not started: its lock {job.lock_path} is held by {who}, "
          "which is not its recorded supervisor", file=sys.stderr)
    return FAILED


def previous_history(states: StateStore, name: str) -> dict[str, object]:
    state = states.load(name)
    if state is None:
        return {}
    history: dict[str, object] = {key: getattr(state, key) for key in CARRIED}
    unseen = state.ended_unseen()
    if unseen:  # its end was never recorded: the new supervisor says so, and how it ended is unknown
        history.update({UNSEEN: unseen, "last_exit_code": procs.UNKNOWN_EXIT, "last_exit_at": None})
    return history


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
        if state.phase in SETTLED and state.supervisor_alive():
            ask_to_look(state)
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


# Phases a supervisor saves only from inside its loop, which handles SIGHUP. Not `starting` (a
# launcher that claimed the lock and has not become the supervisor dies of SIGHUP), nor
# `stopping` and the ends (a supervisor on its way out released the lock itself).
SETTLED = (Phase.RUNNING, Phase.WAITING, Phase.BACKOFF, Phase.STANDBY)


def ask_to_look(state: RunState) -> None:
    """SIGHUP to the live supervisor, which then puts a held lock back at the path at once instead
    of at its next lock check (a minute away at most); our fresh file is free again by now."""
    assert state.supervisor_pid is not None
    try:
        os.kill(state.supervisor_pid, 1)  # SIGHUP (the signal module stays out of the tick)
    except OSError:
        pass  # gone meanwhile, or not ours: its own check comes anyway


def claim(job: Job, states: StateStore, state: Optional[RunState]) -> None:
    """Record at once that this process holds NAME's lock, before any daemon starts.

    Should the lock file be deleted now, a launcher that takes a fresh one finds this claim
    alive and leaves, instead of starting a second copy. The supervisor that this process
    becomes (by exec, the same pid) keeps the claim.
    """
    me = os.getpid()
    state = state or RunState(name=job.name)
    state.phase, state.boot_id, state.lock_path = Phase.STARTING, procs.boot_id(), job.lock_path
    state.supervisor_pid, state.supervisor_start = me, procs.start_time(me)
    state.pid = state.pid_start = None
    states.save(state)


def clear_debris(job: Job) -> None:
    """End what is left of a dead tree (its daemon and supervisor both gone), so that it cannot
    run beside the new copy; its processes carry the job's token in their environment."""
    from ..proc.stop import stop_job

    stop_job(job.lock_path, job.grace)


# The resident supervisor is a fresh interpreter that loads only what supervising needs
# (the launcher's checks load much more): python -I -S -c BOOT PACKAGE_PARENT --state-dir ROOT NAME FD
BOOT = ("import sys; sys.path.append(sys.argv[1]); from watchdog_singleton.supervisor.resident import main; "
        "sys.exit(main(sys.argv[2:]))")


def exec_supervisor(job: Job, lock: FlockLock, root: str, adhoc: bool, passthrough: bool,
                    ready_fd: Optional[int], history: dict[str, object], note: str = "",
                    supfile: Optional[SupervisorFile] = None, adopt: Optional[dict[str, object]] = None) -> None:
    """Become NAME's resident supervisor: exec it in this process, handing over the lock (and the
    flock of its supervisor file). A cluster job's supervisor is a child of this process, which
    becomes its watcher (cluster/watcher.py). `note`: a line for NAME's log once it is open (why a
    shared job runs under a supervisor of its own). `adopt`: the run state of a daemon whose
    supervisor died, which the new one takes over (its lock is the daemon's, not handed over)."""
    beat_fd = None
    if job.cluster:
        from ..cluster import Timing
        from ..cluster.watcher import split_watcher

        become_subreaper()  # the watcher's: orphans of a dead supervisor's tree come to it
        beat_fd = split_watcher(job, Timing.for_lease(job.lease).capped_grace(job.grace), passthrough)
    job_fd = memfd_of({"job": job.to_dict(), "adhoc": adhoc, "passthrough": passthrough,
                       "ready_fd": -1 if ready_fd is None else ready_fd, "lock_fd": lock.fd,
                       "dir_fd": lock.dir_fd, "history": history,
                       "beat_fd": -1 if beat_fd is None else beat_fd, "note": note, "adopt": adopt,
                       "sup_fd": supfile.lock.fd if supfile else None,
                       "sup_dir_fd": supfile.lock.dir_fd if supfile else None})
    sup_fds = supfile.inheritable_fds() if supfile else ()
    for fd in (lock.fd, lock.dir_fd, ready_fd, beat_fd, *sup_fds):
        if fd is not None:
            os.set_inheritable(fd, True)
    become_subreaper()
    from ..proc.spawn import close_all_but

    close_all_but(tuple(fd for fd in (lock.fd, lock.dir_fd, ready_fd, job_fd, beat_fd, *sup_fds) if fd is not None))
    # Its own marker, never another job's: a job started from inside another job's tree must
    # not be taken for part of it (and stopped with it).
    env = procs.clean_environ(dict(os.environ))
    env[TOKEN_ENV] = job.lock_path
    env[JOB_ENV] = job.name
    # glibc reads these at the supervisor's start: big log buffers go back to the system once
    # written (no heap that only grows), and its writer threads share one malloc arena.
    from ..supervisor.resident import RESIDENT_MALLOC

    env.update(RESIDENT_MALLOC)
    os.chdir("/")  # a supervisor pins no mount; and no ~/json.py shadows the standard library
    package_parent = paths.PACKAGE_PARENT
    sys.stdout.flush()
    sys.stderr.flush()
    # -I -S: no site-packages, user site or PYTHON* variables; it needs only the standard library
    # and this package (found through package_parent), and skipping `site` saves half a MiB. A
    # cluster job's supervisor needs its driver (psycopg) from site-packages: -I only.
    flags = ["-I"] if job.cluster else ["-I", "-S"]
    os.execve(sys.executable, [sys.executable, *flags, "-c", BOOT, package_parent, "--state-dir", root,
                               job.name, str(job_fd)], env)


def detach(body: Callable[[int], None], lock: FlockLock, name: str, quiet: bool = False,
           exec_is_ready: bool = False, also: Optional[FlockLock] = None) -> int:
    """Run `body(ready_fd)` in a new session in the background; return once it reports readiness.

    The child writes "ok PID" or a problem to ready_fd. With `exec_is_ready`, the child
    becoming another program (exec closes the O_CLOEXEC pipe without a word) counts as ready.
    """
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        try:
            os.setsid()
            null = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(null, fd)
            os.close(null)
            body(write_end)
            os.write(write_end, b"the supervisor did not start")
        except BaseException as exc:  # the parent prints it: the child has no terminal any more
            try:
                os.write(write_end, f"the supervisor failed: {exc.__class__.__name__}: {exc}".encode())
            except OSError:
                pass
        finally:
            os._exit(FAILED)
    os.close(write_end)
    lock.release()  # the child holds the same lock; our copy must not outlive a quick daemon
    if also is not None:
        also.release()  # the shared resident's lock, which the child holds too
    from ..files import read_to_end

    return tell(read_to_end(read_end).decode(errors="replace"), name, quiet, exec_is_ready)


def tell(answer: str, name: str, quiet: bool, exec_is_ready: bool = False) -> int:
    """Say what the resident reported about the start ("ok PID", or a problem); the exit code."""
    if answer.startswith("unavailable "):  # a cluster job whose database cannot be reached
        if not quiet:
            print(f"watchdog-singleton: {answer[12:]}", file=sys.stderr)
        return OK if quiet else FAILED  # from cron: its log says it; the next tick retries
    if answer.startswith("ok") or (exec_is_ready and not answer):
        if not quiet and answer.startswith("ok standby "):
            print(answer[11:])  # a cluster job that another host runs
        elif not quiet and answer.startswith("ok supervisor "):
            print(f"{name}: its supervisor (pid {answer[14:]}) keeps the due times")
        elif not quiet and answer.startswith("ok "):
            print(f"running {name}: pid {answer[3:]}")
        return OK
    if not quiet or answer:
        print(f"watchdog-singleton: {answer or 'the supervisor exited before the daemon started'}",
              file=sys.stderr)
    return FAILED


def run_lean(job: Job, lock: FlockLock, states: StateStore, background: bool) -> int:
    """Lean mode: no resident process of ours. The daemon holds the lock and writes the files."""
    from ..files import CREATE_FLAGS
    from ..job.daemonenv import daemon_env

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
        states.save(RunState(name=job.name, phase=Phase.RUNNING, boot_id=procs.boot_id(), pid=me,
                             pid_start=procs.start_time(me), started_at=now_iso(), command=job.command,
                             lock_path=job.lock_path, stdout_log=job.stdout_log,
                             stderr_log=job.stderr_log, lean=True))
        os.execve(job.command[0], job.command, daemon_env(job))

    from ..files import ensure_dir

    ensure_dir(os.path.dirname(job.stdout_log))
    ensure_dir(os.path.dirname(job.stderr_log))
    if not background:
        become_daemon()
    return detach(lambda ready_fd: become_daemon(), lock, job.name, quiet=True, exec_is_ready=True)
