"""A command line as one line of text a shell reads back as the same words.

    shell_join(["sh", "-c", "", "a b", "x\\ny"])  ->  "sh -c '' 'a b' $'x\\ny'"

shlex.join's quoting, so an empty argument shows as '' and one with spaces stays one word,
except that an argument holding a control byte (a newline of a multi-line `python -c`, a tab,
an escape) is written in bash's $'...' form: a log line or a status row stays one line, and
no terminal escape reaches the screen. Standard library only and light: the resident
supervisor imports it (shlex would load re).
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing stays out of the resident supervisor's memory; annotations are strings
    from typing import Iterable

_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789@%+=:,./-_")
_ESCAPES = {"\n": "\\n", "\t": "\\t", "\r": "\\r", "\\": "\\\\", "'": "\\'"}


def _is_control(char: str) -> bool:
    code = ord(char)
    return code < 0x20 or 0x7F <= code < 0xA0


def _escaped(char: str) -> str:
    if char in _ESCAPES:
        return _ESCAPES[char]
    if not _is_control(char):
        return char
    return f"\\x{ord(char):02x}" if ord(char) < 0x80 else f"\\u{ord(char):04x}"


def shell_quote(word: str) -> str:
    if not word:
        return "''"
    if all(c in _SAFE for c in word):
        return word
    if any(_is_control(c) for c in word):
        return "$'" + "".join(_escaped(c) for c in word) + "'"
    return "'" + word.replace("'", "'\"'\"'") + "'"


def shell_join(words: Iterable[str]) -> str:
    return " ".join(shell_quote(w) for w in words)
