"""Exit codes and the one exception type for errors a user can cause."""

OK = 0
FAILED = 1  # the operation was attempted and failed
USAGE = 2  # bad usage or invalid input: nothing was changed
NOT_RUNNING = 3  # status: the job is known but not running
NO_SUCH_JOB = 4



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
