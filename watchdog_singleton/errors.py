"""Exit codes and the one exception type for errors a user can cause."""

OK = 0
FAILED = 1  # the operation was attempted and failed
USAGE = 2  # bad usage or invalid input: nothing was changed
NOT_RUNNING = 3  # status: the job is known but not running
NO_SUCH_JOB = 4


class UserError(Exception):
    """An error the user can cause or fix; the message is fit to print on one line."""

    def __init__(self, message: str, exit_code: int = USAGE) -> None:
        super().__init__(message)
        self.exit_code = exit_code
