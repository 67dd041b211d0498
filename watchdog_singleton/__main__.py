"""Entry point: `watchdog-singleton ...` and `python -m watchdog_singleton ...`.

`run` goes straight to the launcher, which imports only the standard library: cron may call it
every minute, and typer alone costs several bare interpreter starts. `farm`'s run path goes
straight to the farm too (farmargs.py), so a short list does not pay for typer either; its help
and its usage errors still go to typer.
"""

from __future__ import annotations

import sys
from typing import List, Optional


def drop_coerced_locale() -> None:
    """Take back the LC_CTYPE the interpreter put in os.environ when it coerced the C locale
    (PEP 538: no LANG, LC_ALL or LC_CTYPE, as under cron): a job keeps the shell's environment,
    and this variable was never the shell's. /proc/self/environ still holds what we were given."""
    import os

    if "LC_CTYPE" not in os.environ:
        return
    try:
        with open("/proc/self/environ", "rb") as f:
            given = f.read().split(b"\0")
    except OSError:
        return
    if not any(item.startswith(b"LC_CTYPE=") for item in given):
        del os.environ["LC_CTYPE"]


def main(argv: Optional[List[str]] = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    drop_coerced_locale()
    if args[:1] == ["run"]:
        from .tick.launch import main as launch_main

        sys.exit(launch_main(args[1:]))
    if args[:1] == ["_notify"]:  # what a batch script calls when its chain ends for good (notify.py)
        from .job.notify import batch_main

        sys.exit(batch_main(args[1:]))
    if args[:1] == ["farm"]:
        from .cli.farmargs import main as farm_main

        code = farm_main(args[1:])
        if code is not None:
            sys.exit(code)
    from .cli.app import main as cli_main

    cli_main(args)


if __name__ == "__main__":
    main()
