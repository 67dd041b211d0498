"""Every exit code we return or expect, and the one exception type for errors a user can cause.

Standard library only: the tick and the resident supervisor import it.
"""

# Our commands.
OK = 0
FAILED = 1  # the operation was attempted and failed
USAGE = 2  # bad usage or invalid input: nothing was changed
NOT_RUNNING = 3  # status: the job is known but not running
NO_SUCH_JOB = 4
STALE = 1  # `lease check`: the token given is no longer the lease's
UNAVAILABLE = 3  # `lease check` and `lease status`: the engine cannot be reached
SOME_FAILED = 1  # `farm`: the list is done, and some tasks failed
# EX_IOERR: the farm's database or files failed it (locked by someone, a full disk, a read-only
# folder, removed, unreachable); it stopped as on SIGUSR1. Fix that, then run the farm again.
STORAGE_FAILED = 74
TEMPFAIL = 75  # EX_TEMPFAIL: try again later; the three uses below
REQUEUE = TEMPFAIL  # `farm`: stopped with work left (signal or --timeout); run the farm again to continue
RERUN = TEMPFAIL  # a batch wrapper ended for a reason the next job of the chain fixes
LOCK_HELD = TEMPFAIL  # flock -E in our crontab line: tells "the lock is held" apart from "flock could not run"
INTERRUPTED = 130  # 128 + SIGINT: the CLI stopped by Ctrl-C

# What a shell would say of a command, so a daemon's or a task's code reads the same.
TIMED_OUT = 124  # timeout(1)'s code: a periodic run over its --timeout
CANNOT_EXECUTE = 126  # found but could not be started
NOT_FOUND = 127  # no such program
SIGNALLED = 128  # killed by signal N: exit 128+N
KILLED = SIGNALLED + 9  # SIGKILL

# The farm's nursery, between its two halves (farm/nursery.py).
NO_NAMESPACE = 3  # the outer half's code when the namespace could not be set up



class UserError(Exception):
    """An error the user can cause or fix; the message is fit to print on one line. `field` names
    the option it is about (options.py: "grace", "every", "command"; "" when none), so `apply`
    can point at the file's line for it."""

    def __init__(self, message: str, exit_code: int = USAGE, field: str = "") -> None:
        super().__init__(one_line(message))
        self.exit_code = exit_code
        self.field = field


def one_line(text: str) -> str:
    """`text` with its control characters escaped (a newline as \\n): a name or an argument
    that holds one must not split a message, nor send raw escape sequences to a terminal."""
    if all(" " <= c < "\x7f" or c == "\t" or c > "\x9f" for c in text):
        return text
    out = []
    for c in text:
        if " " <= c < "\x7f" or c == "\t" or c > "\x9f":
            out.append(c)
        else:
            out.append({"\n": "\\n", "\r": "\\r"}.get(c) or f"\\x{ord(c):02x}")
    return "".join(out)
