"""`farm TASKLIST ...` and `farm run TASKLIST ...`, parsed before typer is imported.

typer, click and pydantic cost several bare interpreter starts, more than GNU parallel's whole
fixed cost; a one-task list should not pay them. This parser takes what click would take for
`farm run` (cli.py declares the options, and their help): `--opt value`, `--opt=value`, `-n8`,
options before or after TASKLIST, `--` before a list whose name starts with `-`, the last of a
repeated option. Anything else (help, a typo, a value that is not a number, a missing TASKLIST)
returns None, and the caller hands the words to typer, which prints its usual one-line error or
help: the errors stay click's, word for word, and only well-formed runs skip the import.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Optional

    from ..commands.farm import FarmRequest

SUBCOMMANDS = ("status", "retry", "trace")  # farm's other commands: typer's
# option -> (FarmRequest field, converter); the names and types of cli.py's farm_run
OPTIONS = {"--workers": ("workers", int), "-n": ("workers", int), "--workdir": ("workdir", str),
           "--timeout": ("timeout", float), "--task-timeout": ("task_timeout", float),
           "--retries": ("retries", int), "--db": ("db", str), "--runner": ("runner", str),
           "--lease": ("lease", float), "--grace": ("grace", float), "--progress-every": ("progress_every", float),
           "--from-pytaskfarmer": ("from_pytaskfarmer", str)}


def parse(args: list[str]) -> Optional[FarmRequest]:
    """The request of `farm ARGS` (the words after `farm`), or None when typer should take them."""
    if not args or args[0] in SUBCOMMANDS or args[0] in ("--help", "-h"):
        return None
    words = args[1:] if args[0] == "run" else args
    values: dict[str, object] = {}
    positional: list[str] = []
    i = 0
    while i < len(words):
        word = words[i]
        i += 1
        if word == "--":
            positional.extend(words[i:])
            break
        if not word.startswith("-") or word == "-":
            positional.append(word)
            continue
        if word.startswith("--"):
            name, eq, value = word.partition("=")
            if not eq:
                value = ""
        else:  # a short option: its value may be glued on (-n8)
            name, value, eq = word[:2], word[2:], ""
        if name not in OPTIONS:
            return None  # --help, a typo, a flag of another command: click says what is wrong
        if not eq and not value:
            if i >= len(words):
                return None  # "requires an argument"
            value = words[i]  # as click does, even when it starts with '-' (--retries -1)
            i += 1
        field, convert = OPTIONS[name]
        try:
            values[field] = convert(value)
        except ValueError:
            return None
    if len(positional) != 1:
        return None  # a missing TASKLIST or extra words
    from ..commands.farm import FarmRequest

    return FarmRequest(tasklist=positional[0], **values)  # type: ignore[arg-type]


def main(args: list[str]) -> Optional[int]:
    """Run `farm ARGS` without typer; None if typer must parse them (help, an error)."""
    import sys

    request = parse(args)
    if request is None:
        return None
    from ..commands.farm import run
    from ..errors import UserError

    def echo(text: str) -> None:
        print(text, flush=True)

    def warn(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    try:
        return run(request, echo, warn)
    except UserError as exc:
        warn(f"watchdog-singleton: {exc}")
        return exc.exit_code
    except KeyboardInterrupt:  # as typer's Abort
        return 130
